"""A training or evaluation set as the engine uses it: read, labelled, encoded."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pac.data.encoding import EncodedSample, encode, pad_token_id
from pac.data.labels import label_vocabulary
from pac.data.readers import read_examples
from pac.engine.loading import LoadedModel
from pac.tasks import TaskSpec


@dataclass(frozen=True)
class DataFields:
    """How to read a data file: which fields of a row hold the text, the optional second
    text, and the target; and ``format`` (``jsonl``, ``csv``, ``tsv``; "" = from the file's
    extension)."""

    text: str = "text"
    pair: str = "text_pair"
    target: str = "label"
    format: str = ""


def resolve_task(task: TaskSpec, train_path: Path, fields: DataFields) -> TaskSpec:
    """Fill in a classification task's labels from the training data when not given."""
    if task.kind != "classification" or task.labels:
        return task
    examples = read_examples(
        train_path,
        text_field=fields.text,
        pair_field=fields.pair,
        target_field=fields.target,
        data_format=fields.format,
    )
    return replace(task, labels=label_vocabulary(examples, field=fields.target))


def load_samples(
    path: Path,
    loaded: LoadedModel,
    task: TaskSpec,
    fields: DataFields,
    *,
    require_target: bool = True,
    limit: int | None = None,
) -> list[EncodedSample]:
    """Read ``path`` and encode it with the model's own tokenizer (at most ``limit`` rows)."""
    examples = read_examples(
        path,
        text_field=fields.text,
        pair_field=fields.pair,
        target_field=fields.target,
        data_format=fields.format,
        # A causal LM learns the text itself; a target (completion) is optional.
        require_target=require_target and task.kind != "causal-lm",
    )
    if limit is not None:
        examples = examples[:limit]
    return encode(
        examples,
        loaded.tokenizer,
        task,
        is_encoder_decoder=loaded.family.is_encoder_decoder,
        decoder_start_token_id=loaded.decoder_start_token_id,
    )


def pad_id(loaded: LoadedModel) -> int:
    return pad_token_id(loaded.tokenizer)
