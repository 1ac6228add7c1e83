"""A list of encoded samples -> one padded batch of tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

from pac.data.encoding import IGNORE_INDEX, EncodedSample
from pac.tasks import TaskSpec

T = TypeVar("T")


def collate(
    samples: Sequence[EncodedSample], pad_id: int, *, task: TaskSpec
) -> dict[str, torch.Tensor]:
    """Pad ``samples`` on the right into a batch.

    Keys (B = batch, T = longest input, Tt = longest target / decoder input):

    - ``input_ids`` [B, T] long (padded with ``pad_id``), ``attention_mask`` [B, T] long
      (1 = real token), ``sample_index`` [B] long (``EncodedSample.index``);
    - ``labels``: [B, Tt] long padded with -100 when the samples have target ids (text
      head, seq2seq, causal-lm; for causal-lm Tt = T); else [B] long for classification
      or [B] float32 for regression; absent when the samples carry no label (prediction);
    - ``class_labels`` [B] long: the class ids of a text-head classification, so accuracy
      can be computed next to the token loss;
    - ``decoder_input_ids`` [B, Tt] long (padded with ``pad_id``) and
      ``decoder_attention_mask`` [B, Tt] long, for encoder-decoder samples.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    input_ids, attention_mask = _pad([s.input_ids for s in samples], pad_id)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "sample_index": torch.tensor([s.index for s in samples], dtype=torch.long),
    }
    targets = _every([s.target_ids for s in samples], "target_ids")
    if targets is not None:
        batch["labels"], _ = _pad(targets, IGNORE_INDEX)
    labels = _every([s.label for s in samples], "label")
    if labels is not None:
        dtype = torch.float32 if task.kind == "regression" else torch.long
        # With target ids the loss is over tokens; the class id is kept for accuracy.
        batch["class_labels" if targets is not None else "labels"] = torch.tensor(
            labels, dtype=dtype
        )
    decoder_inputs = _every([s.decoder_input_ids for s in samples], "decoder_input_ids")
    if decoder_inputs is not None:
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = _pad(decoder_inputs, pad_id)
    return batch


def _pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``rows`` with ``value``: ids [B, T] long and mask [B, T] long."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def _every(values: Sequence[T | None], name: str) -> list[T] | None:
    """The values when every sample has the field, None when none has; mixed is an error."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    if len(present) < len(values):
        raise ValueError(
            f"{len(present)} of {len(values)} samples in the batch have {name}; "
            "encode every sample of a data set for the same task"
        )
    return present
