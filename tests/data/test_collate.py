"""collate: shapes, right padding, masks, -100 and the keys of each task."""

from __future__ import annotations

import pytest
import torch

from pac.data.collate import collate
from pac.data.encoding import EncodedSample, fingerprint
from pac.tasks import TaskSpec

PAD = 9


def sample(
    index: int,
    ids: tuple[int, ...],
    label: int | float | None = None,
    targets: tuple[int, ...] | None = None,
    decoder: tuple[int, ...] | None = None,
) -> EncodedSample:
    key = fingerprint(ids, decoder, targets, label)
    return EncodedSample(index, ids, label, targets, decoder, key)


def test_classification_batch() -> None:
    batch = collate([sample(4, (1, 2, 3), 1), sample(2, (5,), 0)], PAD,
                    task=TaskSpec("classification", ("a", "b")))
    assert set(batch) == {"input_ids", "attention_mask", "sample_index", "labels"}
    assert batch["input_ids"].tolist() == [[1, 2, 3], [5, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["sample_index"].tolist() == [4, 2]
    assert batch["labels"].tolist() == [1, 0]
    assert all(t.dtype == torch.long for t in batch.values())


def test_regression_labels_are_float32() -> None:
    batch = collate([sample(0, (1,), 0.5), sample(1, (2, 3), 2.0)], PAD,
                    task=TaskSpec("regression"))
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [0.5, 2.0]


def test_text_head_batch_has_token_labels_class_labels_and_decoder_inputs() -> None:
    task = TaskSpec("classification", ("fresh", "rotten"), head="text")
    samples = [sample(0, (1, 2), 1, (7, 8, 1), (0, 7, 8)), sample(1, (3,), 0, (6, 1), (0, 6))]
    batch = collate(samples, PAD, task=task)
    assert batch["labels"].tolist() == [[7, 8, 1], [6, 1, -100]]
    assert batch["class_labels"].tolist() == [1, 0]
    assert batch["decoder_input_ids"].tolist() == [[0, 7, 8], [0, 6, PAD]]
    assert batch["decoder_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["decoder_input_ids"].shape == batch["labels"].shape == (2, 3)


def test_encoder_decoder_linear_head_has_one_decoder_position() -> None:
    batch = collate([sample(0, (1, 2), 1, None, (0,)), sample(1, (3,), 0, None, (0,))], PAD,
                    task=TaskSpec("classification", ("a", "b")))
    assert batch["decoder_input_ids"].tolist() == [[0], [0]]
    assert batch["labels"].tolist() == [1, 0]
    assert "class_labels" not in batch


def test_causal_lm_labels_align_with_inputs() -> None:
    batch = collate([sample(0, (1, 2, 3), None, (-100, 2, 3)), sample(1, (4,), None, (4,))], PAD,
                    task=TaskSpec("causal-lm"))
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["labels"].shape == batch["input_ids"].shape
    assert "class_labels" not in batch and "decoder_input_ids" not in batch


def test_prediction_batch_has_no_labels() -> None:
    batch = collate([sample(0, (1,)), sample(1, (2,))], PAD, task=TaskSpec("regression"))
    assert "labels" not in batch


def test_mixed_batch_and_empty_batch_are_errors() -> None:
    task = TaskSpec("classification", ("a", "b"))
    with pytest.raises(ValueError, match="1 of 2 samples in the batch have label"):
        collate([sample(0, (1,), 1), sample(1, (2,))], PAD, task=task)
    with pytest.raises(ValueError, match="empty batch"):
        collate([], PAD, task=task)
