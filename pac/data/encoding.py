"""Examples -> token ids with the model's own tokenizer, per task and model shape.

What each (task, model) pair produces (``label`` is what a linear head is trained on,
``target_ids`` what an LM head is trained on; -100 marks positions without a loss):

=====================================  ===============================================
classification / regression,           ``input_ids`` = tokenizer(text, text_pair);
encoder-only or decoder-only           ``label`` = class id (int) or value (float)
encoder-decoder, regression or         as above, plus ``decoder_input_ids`` =
classification with head "linear"      ``(decoder_start,)``
encoder-decoder, classification with   ``target_ids`` = the class name tokenized as a
head "text"                            target; ``decoder_input_ids`` = ``(decoder_start,)
                                       + target_ids[:-1]``; ``label`` = class id
seq2seq (encoder-decoder)              ``target_ids`` = the target text tokenized as a
                                       target; decoder inputs shifted right as above
causal-lm (decoder-only)               with a target: ``input_ids`` = prompt + target
                                       (+ eos), ``target_ids`` the same with -100 on the
                                       prompt; without: ``target_ids = input_ids``
=====================================  ===============================================

The next-token shift of a causal LM is done by the model code, not here. Prompts are
truncated to ``task.max_length`` tokens, targets to ``task.max_target_length``.
A causal-LM target is tokenized on its own, without special tokens: a tokenizer that
marks word starts by a leading space (GPT-2) needs that space in the data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pac.data.errors import at
from pac.data.examples import Example
from pac.data.labels import class_ids, label_name, regression_values
from pac.tasks import TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # positions without a loss (the value torch's cross_entropy ignores)


@dataclass(frozen=True)
class EncodedSample:
    """One example as token ids, ready to be batched.

    ``index`` is the example's position in the data set (stable across epochs, the
    cache's sample number). ``fingerprint`` is a sha256 of the token ids and the label:
    the cache keys samples by it, so a change of text or tokenizer output never reads a
    stale entry.
    """

    index: int
    input_ids: tuple[int, ...]
    label: int | float | None
    target_ids: tuple[int, ...] | None
    decoder_input_ids: tuple[int, ...] | None
    fingerprint: str


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used to pad batches: the pad token, else the eos token (GPT-2, Llama have
    no pad token; padded positions are masked out, so which id fills them does not
    matter)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(token_id, int):
            return token_id
    raise ValueError(
        f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token; "
        "set one (tokenizer.pad_token = ...) and save it with the model"
    )


def fingerprint_key(fingerprint: str) -> int:
    """A sample's fingerprint as 8 bytes (an unsigned 64-bit integer): how an agent names
    the samples its cache holds in a reply that may list hundreds of thousands
    (``RestoreStateReply.cached_sample_keys``). Two of a job's samples share a key with a
    chance of about n^2 / 2^65: 1 in 10 million for a million samples."""
    digest = hashlib.blake2b(fingerprint.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def fingerprint(
    input_ids: Sequence[int],
    decoder_input_ids: Sequence[int] | None,
    target_ids: Sequence[int] | None,
    label: int | float | None,
) -> str:
    """sha256 hex of a sample's token id sequences and label."""
    payload = json.dumps(
        [list(input_ids), _opt_list(decoder_input_ids), _opt_list(target_ids), label],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def encode(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    task: TaskSpec,
    *,
    is_encoder_decoder: bool,
    decoder_start_token_id: int | None,
    target_field: str = "label",
) -> list[EncodedSample]:
    """Tokenize ``examples`` for ``task`` (see the module docstring for what each
    (task, model) pair gives).

    Classification or regression examples of which none has a target (input to predict)
    give ``label=None`` and no ``target_ids`` (a text head's decoder reads only the start
    token). ``target_field`` only names the field in error messages. Raises ``DataError``
    for an example with no tokens or a bad target, ``ValueError`` for a task the model
    shape cannot do."""
    _check_task(task, is_encoder_decoder, decoder_start_token_id)
    inputs = _tokenize_inputs(examples, tokenizer, task.max_length)
    for example, ids in zip(examples, inputs, strict=True):
        if not ids:
            raise at(example.source, example.line, "the text has no tokens after tokenization")
    if task.kind == "causal-lm":
        return _causal_lm(examples, inputs, tokenizer, task)

    labels: list[int | float | None] = [None] * len(examples)
    targets: list[list[int] | None] = [None] * len(examples)
    unlabelled = all(example.target is None for example in examples)
    if task.kind == "classification":
        if not task.labels:
            raise ValueError(
                "task.labels is empty; read the class names with "
                "pac.data.labels.label_vocabulary(train_examples)"
            )
        if not unlabelled:
            classes = class_ids(examples, task.labels, field=target_field)
            labels = list(classes)
            if task.head == "text":
                names = [task.labels[i] for i in classes]
                targets = list(_tokenize_targets(names, tokenizer, task.max_target_length))
    elif task.kind == "regression":
        if not unlabelled:
            labels = list(regression_values(examples, field=target_field))
    else:  # seq2seq
        texts = [label_name(_required_target(example, target_field)) for example in examples]
        targets = list(_tokenize_targets(texts, tokenizer, task.max_target_length))

    samples = []
    for index, (ids, label, target) in enumerate(zip(inputs, labels, targets, strict=True)):
        if target is not None and not target:
            example = examples[index]
            raise at(example.source, example.line, "the target has no tokens after tokenization")
        decoder_inputs: tuple[int, ...] | None = None
        if is_encoder_decoder:
            assert decoder_start_token_id is not None  # checked by _check_task
            # Teacher forcing: the decoder reads the target shifted right by one.
            shifted = target[:-1] if target is not None else []
            decoder_inputs = (decoder_start_token_id, *shifted)
        samples.append(_sample(index, ids, label, target, decoder_inputs))
    return samples


def _check_task(task: TaskSpec, is_encoder_decoder: bool, start: int | None) -> None:
    if is_encoder_decoder and start is None:
        raise ValueError("an encoder-decoder model needs decoder_start_token_id (from its config)")
    if task.kind == "seq2seq" and not is_encoder_decoder:
        raise ValueError(
            "task seq2seq needs an encoder-decoder model (T5, BART); "
            "use task causal-lm for a decoder-only model"
        )
    if task.kind == "causal-lm" and is_encoder_decoder:
        raise ValueError(
            "task causal-lm needs a decoder-only model; "
            "use task seq2seq for an encoder-decoder model"
        )
    if task.kind == "classification" and task.head == "text" and not is_encoder_decoder:
        raise ValueError(
            "head 'text' (text-to-text classification) needs an "
            "encoder-decoder model; use head 'linear'"
        )


def _tokenize_inputs(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[list[int]]:
    """Token ids of each example's text (and pair), in one tokenizer call per kind."""
    result: list[list[int]] = [[] for _ in examples]
    singles = [i for i, example in enumerate(examples) if example.text_pair is None]
    pairs = [i for i, example in enumerate(examples) if example.text_pair is not None]
    for group, with_pair in ((singles, False), (pairs, True)):
        if not group:
            continue
        texts = [examples[i].text for i in group]
        second = [str(examples[i].text_pair) for i in group] if with_pair else None
        encoded = _call(tokenizer, texts, second, truncation=True, max_length=max_length)
        for i, ids in zip(group, encoded, strict=True):
            result[i] = ids
    return result


def _tokenize_targets(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[list[int] | None]:
    encoded = _call(tokenizer, text_target=texts, truncation=True, max_length=max_length)
    return list(encoded)


def _call(tokenizer: PreTrainedTokenizerBase, *args: Any, **kwargs: Any) -> list[list[int]]:
    ids = tokenizer(*args, **kwargs)["input_ids"]
    return [list(map(int, row)) for row in ids]


def _causal_lm(
    examples: Sequence[Example],
    prompts: list[list[int]],
    tokenizer: PreTrainedTokenizerBase,
    task: TaskSpec,
) -> list[EncodedSample]:
    eos = tokenizer.eos_token_id
    samples = []
    for index, (example, prompt) in enumerate(zip(examples, prompts, strict=True)):
        if example.target is None:
            samples.append(_sample(index, prompt, None, prompt, None))
            continue
        answer = _call(
            tokenizer,
            [label_name(example.target)],
            add_special_tokens=False,
            truncation=True,
            max_length=task.max_target_length,
        )[0]
        # The model must learn to stop: end the answer with eos unless it already does.
        if isinstance(eos, int) and (not answer or answer[-1] != eos):
            answer = [*answer[: task.max_target_length - 1], eos]
        ids = prompt + answer
        targets = [IGNORE_INDEX] * len(prompt) + answer
        samples.append(_sample(index, ids, None, targets, None))
    return samples


def _required_target(example: Example, field: str) -> str | float:
    if example.target is None:
        raise at(example.source, example.line, f"field '{field}' is missing: seq2seq needs it")
    return example.target


def _sample(
    index: int,
    input_ids: Sequence[int],
    label: int | float | None,
    target_ids: Sequence[int] | None,
    decoder_input_ids: Sequence[int] | None,
) -> EncodedSample:
    inputs = tuple(input_ids)
    targets = None if target_ids is None else tuple(target_ids)
    decoder = None if decoder_input_ids is None else tuple(decoder_input_ids)
    return EncodedSample(
        index=index,
        input_ids=inputs,
        label=label,
        target_ids=targets,
        decoder_input_ids=decoder,
        fingerprint=fingerprint(inputs, decoder, targets, label),
    )


def _opt_list(ids: Sequence[int] | None) -> list[int] | None:
    return None if ids is None else list(ids)
