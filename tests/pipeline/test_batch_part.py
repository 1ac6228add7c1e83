"""What the coordinator sends each device for a step: exactly the rows it computes and only
the keys its stage reads; far fewer bytes than the whole mini-batch to every device."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch

from pac.pipeline.batch_part import (
    BatchPart,
    owned_part,
    pack_steps,
    pipeline_part,
    pipeline_positions,
    unpack_steps,
)
from pac.pipeline.cache_phase import DataParallelWorker
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.pipeline.routing import device_rows, micro_batch_rows
from pac.wire.codec import decode, encode

ROWS, SEQ, TGT = 11, 9, 4


def seq2seq_batch() -> tuple[dict[str, torch.Tensor], list[str]]:
    """A collated encoder-decoder batch: every key collate makes."""
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(5, 50, (ROWS, SEQ), generator=generator),
        "attention_mask": torch.ones(ROWS, SEQ, dtype=torch.long),
        "sample_index": torch.arange(ROWS),
        "decoder_input_ids": torch.randint(5, 50, (ROWS, TGT), generator=generator),
        "decoder_attention_mask": torch.ones(ROWS, TGT, dtype=torch.long),
        "labels": torch.randint(5, 50, (ROWS, TGT), generator=generator),
        "class_labels": torch.randint(0, 2, (ROWS,), generator=generator),
    }
    # Row r is recognisable in every key.
    batch["attention_mask"][:, -1] = torch.arange(ROWS) % 2
    return batch, [f"sample-{r:03d}" for r in range(ROWS)]


THREE_STAGES = PipelineLayout(
    (
        StageSpec(0, 2, ("a", "b"), (2.0, 1.0)),
        StageSpec(2, 4, ("c",), (1.0,)),
        StageSpec(4, 6, ("d", "e", "f"), (1.0, 1.0, 3.0)),
    ),
    micro_batches=3,
)


def expected_rows(layout: PipelineLayout, device: str, size: int) -> list[int]:
    stage, rank = layout.locate(device)
    rows: list[int] = []
    for micro in micro_batch_rows(size, layout.micro_batches):
        start, stop = device_rows(micro, layout.stages[stage].shares)[rank]
        rows += range(start, stop)
    return rows


def test_each_device_gets_its_rows_and_its_stage_keys_only() -> None:
    batch, ids = seq2seq_batch()
    whole = BatchPart.whole(batch, ids, loss_count=37)
    # The mini-batch's rows longest first: odd rows use the input's last column.
    order = [r for r in range(ROWS) if r % 2] + [r for r in range(ROWS) if not r % 2]
    batch = {key: value[order] for key, value in batch.items()}
    ids = [ids[r] for r in order]
    seen_per_stage: dict[int, list[int]] = {}
    for device in THREE_STAGES.devices:
        part = pipeline_part(THREE_STAGES, device, whole)
        stage, _ = THREE_STAGES.locate(device)
        rows = expected_rows(THREE_STAGES, device, ROWS)
        assert list(part.positions) == rows == pipeline_positions(THREE_STAGES, device, ROWS)
        seen_per_stage.setdefault(stage, []).extend(rows)
        assert part.size == ROWS and part.loss_count == 37
        assert part.sample_ids == tuple(ids[r] for r in rows)
        keys = set(part.tensors)
        if stage == 0:  # the embedding: ids of both stacks, and the masks
            assert keys == {
                "input_ids",
                "attention_mask",
                "decoder_input_ids",
                "decoder_attention_mask",
            }
        elif stage == 1:  # side blocks and cache writes read only the masks
            assert keys == {"attention_mask", "decoder_attention_mask"}
        else:  # the head also reads the labels
            assert keys == {"attention_mask", "decoder_attention_mask", "labels"}
        for key, value in part.tensors.items():
            assert torch.equal(value, batch[key][rows]), (device, key)
    # Inside a stage the group's devices split every row exactly once.
    for stage_rows in seen_per_stage.values():
        assert sorted(stage_rows) == list(range(ROWS))


def test_a_single_stage_gets_inputs_and_labels() -> None:
    batch, ids = seq2seq_batch()
    layout = PipelineLayout((StageSpec(0, 6, ("a", "b"), (1.0, 1.0)),), micro_batches=2)
    part = pipeline_part(layout, "b", BatchPart.whole(batch, ids, 5))
    assert set(part.tensors) == set(batch) - {"sample_index", "class_labels"}


def test_cache_phase_parts_hold_owned_rows_with_masks_and_labels() -> None:
    batch, ids = seq2seq_batch()
    owners = {s: ("x", "y", "z")[i % 3] for i, s in enumerate(ids)}
    whole = BatchPart.whole(batch, ids, 9)
    covered: list[str] = []
    for device in ("x", "y", "z"):
        part = owned_part(owners, device, whole)
        assert part.sample_ids is not None
        assert all(owners[s] == device for s in part.sample_ids)
        covered += part.sample_ids
        assert set(part.tensors) == {"attention_mask", "decoder_attention_mask", "labels"}
        rows = [i for i, s in enumerate(ids) if owners[s] == device]
        assert list(part.positions) == rows
        assert torch.equal(part.tensors["labels"], batch["labels"][rows])
    assert sorted(covered) == ids


def test_a_part_survives_the_wire_even_when_empty() -> None:
    batch, ids = seq2seq_batch()
    whole = BatchPart.whole(batch, ids, 9)
    for part in (pipeline_part(THREE_STAGES, "f", whole), whole.select([], ["labels"])):
        tensors, _ = decode(bytearray(encode(part.pack(), {}).to_bytes()))
        back = BatchPart.unpack(tensors)
        assert back.positions == part.positions and back.sample_ids == part.sample_ids
        assert (back.size, back.loss_count) == (ROWS, 9)
        assert back.tensors.keys() == part.tensors.keys()
        for key in part.tensors:
            assert back.tensors[key].dtype == part.tensors[key].dtype
            assert torch.equal(back.tensors[key], part.tensors[key])
        assert back.columns.keys() == part.columns.keys()
        for mask, width in part.columns.items():
            assert width.dtype == torch.int64 and torch.equal(back.columns[mask], width)
    # The epoch-1 part knows each row's micro-batch's columns (it has rows of several).
    assert pipeline_part(THREE_STAGES, "f", whole).columns["attention_mask"].numel() > 0


def test_integer_tensors_travel_narrow_and_come_back_exact() -> None:
    tensors = {
        "attention_mask": torch.tensor([[1, 1, 0]]),  # uint8 on the wire
        "labels": torch.tensor([[7, -100, 31999]]),  # int32
        "big": torch.tensor([[2**40, 0, 1]]),  # stays int64
        "score": torch.tensor([[0.5, 1.5, -2.0]]),  # floats untouched
    }
    part = BatchPart(tensors, (0,), 1, 3)
    message = part.pack()
    assert message["attention_mask@int64"].dtype == torch.uint8
    assert message["labels@int64"].dtype == torch.int32
    assert message["big"].dtype == torch.int64 and message["score"].dtype == torch.float32
    back = BatchPart.unpack(message).tensors
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_a_device_refuses_rows_that_are_not_its_own() -> None:
    batch, ids = seq2seq_batch()
    whole = BatchPart.whole(batch, ids, 9)
    part = pipeline_part(THREE_STAGES, "a", whole)
    other = expected_rows(THREE_STAGES, "b", ROWS)
    with pytest.raises(KeyError, match="not in this part"):
        part.rows((other[0], other[0] + 1))
    # The cache phase: a row of a sample another device owns is an error, not ignored.
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    worker = DataParallelWorker(
        "x",
        ["x", "y"],
        cast(Any, model),
        *(cast(Any, None),) * 2,
        optimizer,
        None,
        {ids[0]: "x", ids[1]: "y"},
    )
    with pytest.raises(ValueError, match="does not own"):
        worker.run_step(0, {"labels": batch["labels"][:2]}, ids[:2], 2)


def test_the_coordinator_sends_far_fewer_bytes_per_step() -> None:
    """Before: every device got the whole mini-batch. After: each its part."""
    batch, ids = seq2seq_batch()
    whole = BatchPart.whole(batch, ids, 9)
    devices = THREE_STAGES.devices

    def nbytes(message: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in message.values())

    before = len(devices) * nbytes(batch)  # at least: the old message held the whole batch
    epoch_one = sum(nbytes(pipeline_part(THREE_STAGES, d, whole).pack()) for d in devices)
    owners = {s: devices[i % len(devices)] for i, s in enumerate(ids)}
    cached = sum(nbytes(owned_part(owners, d, whole).pack()) for d in devices)
    # The parts together hold about one mini-batch (masks once per stage), not six.
    assert epoch_one < before / 3
    assert cached < before / 4


def test_a_range_of_steps_travels_as_one_message() -> None:
    batch, ids = seq2seq_batch()
    owners = {s: "x" if i % 4 else "y" for i, s in enumerate(ids)}
    parts = [owned_part(owners, "y", BatchPart.whole(batch, ids, n)) for n in (3, 4, 5)]
    message = pack_steps(parts)
    back = unpack_steps(message, 3)
    assert [p.loss_count for p in back] == [3, 4, 5]
    for got, sent in zip(back, parts, strict=True):
        assert got.positions == sent.positions and got.sample_ids == sent.sample_ids
        assert torch.equal(got.tensors["labels"], sent.tensors["labels"])
    with pytest.raises(ValueError, match="names no step"):
        unpack_steps(message, 2)
