"""Predictions of a backbone plus exported adapters over a data file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pac.cache.key import fingerprint_model_dir
from pac.data.batches import batches
from pac.data.collate import collate
from pac.data.encoding import encode, pad_token_id
from pac.data.examples import Example
from pac.data.readers import read_examples
from pac.engine.evaluation import label_first_tokens
from pac.engine.export import load_adapters, task_from_config
from pac.engine.generation import generate
from pac.engine.loading import LoadedModel, load_model
from pac.metrics import metrics_for_task
from pac.techniques import build_technique
from pac.techniques.backbone_dtype import backbone_dtype_of, with_backbone_dtype
from pac.techniques.base import TunedModel


def load_tuned_model(
    model_dir: Path, adapters_dir: Path, backbone_dtype: str | None = None
) -> tuple[LoadedModel, TunedModel]:
    """The backbone in ``model_dir`` with the adapters exported to ``adapters_dir``; the
    adapters must have been trained on exactly this backbone (same weights hash).

    The backbone loads in the dtype it was trained with (``"backbone_dtype"`` in the
    export's settings, float32 when absent) unless ``backbone_dtype`` says otherwise: the
    trained parameters are float32 either way, so adapters trained beside a bfloat16
    backbone also run beside a float32 one (their outputs differ by the backbone's
    rounding only)."""
    config, tensors = load_adapters(adapters_dir)
    settings = dict(config["settings"])
    if backbone_dtype is not None:
        settings = with_backbone_dtype(settings, backbone_dtype)
    loaded = load_model(model_dir, dtype=backbone_dtype_of(settings))
    if config["model_fingerprint"] != fingerprint_model_dir(model_dir):
        raise ValueError(
            f"the adapters in {adapters_dir} were trained on a different model than {model_dir} "
            "(weights hash differs); pass the --model they were trained on"
        )
    task = task_from_config(config)
    model = build_technique(config["technique"], loaded.family, task, settings)
    model.load_trainable_state_dict(tensors)
    model.eval()
    return loaded, model


def predict_file(
    model_dir: Path,
    adapters_dir: Path,
    data: Path,
    *,
    text_field: str = "text",
    pair_field: str = "text_pair",
    target_field: str = "label",
    data_format: str = "",
    batch_size: int = 32,
    max_new_tokens: int = 32,
    backbone_dtype: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Rows ``{"text", "prediction"[, "target"]}`` and, when every row has a target, the
    task's metrics. ``data_format``: see :func:`pac.data.readers.read_examples`;
    ``backbone_dtype``: see :func:`load_tuned_model`."""
    loaded, model = load_tuned_model(model_dir, adapters_dir, backbone_dtype)
    examples = read_examples(
        data,
        text_field=text_field,
        pair_field=pair_field,
        target_field=target_field,
        require_target=False,
        data_format=data_format,
    )
    if model.task.kind in ("seq2seq", "causal-lm"):
        return _generate_rows(loaded, model, examples, max_new_tokens)
    return _classify_rows(loaded, model, examples, batch_size)


@torch.no_grad()
def _classify_rows(
    loaded: LoadedModel, model: TunedModel, examples: list[Example], batch_size: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    task = model.task
    labelled = all(example.target is not None for example in examples)
    if not labelled:
        # Targets only shape the decoder input of a text head, whose first position (the
        # one that is scored) does not depend on them: any class name will do.
        stand_in = task.labels[0] if task.kind == "classification" else 0.0
        examples = [replace(example, target=stand_in) for example in examples]
    samples = encode(
        examples,
        loaded.tokenizer,
        task,
        is_encoder_decoder=loaded.family.is_encoder_decoder,
        decoder_start_token_id=loaded.decoder_start_token_id,
    )
    firsts = label_first_tokens(task, loaded.tokenizer) if task.generates_text else None
    predictions: list[float] = []
    for group in batches(samples, batch_size, shuffle=False, seed=0, epoch=0):
        outputs = model(collate(group, pad_token_id(loaded.tokenizer), task=task))
        predictions += model.head.predict(outputs, firsts).tolist()
    rows: list[dict[str, Any]] = []
    for example, prediction in zip(examples, predictions, strict=True):
        value: Any = task.labels[int(prediction)] if task.kind == "classification" else prediction
        row: dict[str, Any] = {"text": example.text, "prediction": value}
        if labelled:
            row["target"] = example.target
        rows.append(row)
    metrics: dict[str, float] = {}
    if labelled:
        references = [s.label for s in samples]
        metrics = metrics_for_task(task, predictions, references)  # type: ignore[arg-type]
    return rows, metrics


def _generate_rows(
    loaded: LoadedModel, model: TunedModel, examples: list[Example], max_new_tokens: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    tokenizer = loaded.tokenizer
    rows: list[dict[str, Any]] = []
    for example in examples:
        ids = tokenizer(example.text, truncation=True, max_length=model.task.max_length)[
            "input_ids"
        ]
        new = generate(
            model,
            list(ids),
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=loaded.decoder_start_token_id,
            max_new_tokens=max_new_tokens,
        )
        row: dict[str, Any] = {
            "text": example.text,
            "prediction": tokenizer.decode(new, skip_special_tokens=True),
        }
        if example.target is not None:
            row["target"] = example.target
        rows.append(row)
    metrics: dict[str, float] = {}
    if rows and all("target" in row for row in rows):
        metrics = metrics_for_task(
            model.task, [r["prediction"] for r in rows], [str(r["target"]) for r in rows]
        )
    return rows, metrics
