"""Epoch 1 cuts each micro-batch to its own longest row: the rows go longest first, every
device of every stage computes a micro-batch at the same width, and only padding goes."""

from __future__ import annotations

import pytest
import torch

from pac.data.encoding import IGNORE_INDEX
from pac.pipeline.batch_part import BatchPart, pipeline_parts
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.pipeline.micro_columns import token_scale, used_columns
from pac.pipeline.routing import device_rows, micro_batch_rows

TWO_BY_TWO = PipelineLayout(
    (
        StageSpec(0, 2, ("a", "b"), (2.0, 1.0)),
        StageSpec(2, 4, ("c", "d"), (1.0, 1.0)),
    ),
    micro_batches=3,
)


def right_padded(lengths: list[int], width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(5, 90, (length,), generator=generator)
        mask[row, :length] = 1
    return ids, mask


def causal_lm_batch(lengths: list[int]) -> dict[str, torch.Tensor]:
    ids, mask = right_padded(lengths, max(lengths) + 2, seed=0)  # two columns of all padding
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def seq2seq_batch(lengths: list[int], targets: list[int]) -> dict[str, torch.Tensor]:
    ids, mask = right_padded(lengths, max(lengths), seed=1)
    decoder, decoder_mask = right_padded(targets, max(targets), seed=2)
    labels = decoder.masked_fill(decoder_mask == 0, IGNORE_INDEX)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "decoder_input_ids": decoder,
        "decoder_attention_mask": decoder_mask,
        "labels": labels,
        "class_labels": torch.arange(len(lengths)),
    }


LENGTHS = [3, 11, 5, 2, 9, 9, 4, 7, 1, 6, 8]
TARGETS = [2, 1, 4, 3, 2, 5, 1, 1, 3, 2, 4]


@pytest.mark.parametrize(
    "batch",
    [causal_lm_batch(LENGTHS), seq2seq_batch(LENGTHS, TARGETS)],
    ids=["causal-lm", "seq2seq"],
)
def test_each_micro_batch_is_cut_to_its_longest_row_and_loses_only_padding(
    batch: dict[str, torch.Tensor],
) -> None:
    ids = [f"s{row:02d}" for row in range(len(LENGTHS))]
    parts = pipeline_parts(TWO_BY_TWO, BatchPart.whole(batch, ids, loss_count=5))
    rows_of = {s: row for row, s in enumerate(ids)}
    used = used_columns(batch)
    assert set(used) == {m for m in ("attention_mask", "decoder_attention_mask") if m in batch}
    micro = micro_batch_rows(len(ids), TWO_BY_TWO.micro_batches)
    computed = {mask: 0 for mask in used}
    widths: dict[tuple[int, str], set[int]] = {}
    seen: list[str] = []
    members: dict[int, list[int]] = {}  # micro-batch -> its rows in the user's batch
    for stage_index, stage in enumerate(TWO_BY_TWO.stages):
        for rank, device in enumerate(stage.devices):
            part = parts[device]
            for index, span in enumerate(micro):
                mine = device_rows(span, stage.shares)[rank]
                if mine[0] == mine[1]:
                    continue
                got = part.rows(mine)
                samples = part.ids(mine)
                assert samples is not None
                original = [rows_of[s] for s in samples]
                if stage_index == 0:
                    seen += samples
                    members.setdefault(index, []).extend(original)
                for mask in used:
                    width = got[mask].shape[1]
                    widths.setdefault((index, mask), set()).add(width)
                    if stage_index == 0:
                        computed[mask] += width * len(samples)
                for key, value in got.items():
                    full = batch[key][original]
                    if full.dim() < 2:
                        assert torch.equal(value, full), key
                        continue
                    width = value.shape[1]
                    assert torch.equal(value, full[:, :width]), key
                    dropped = full[:, width:]  # padding only
                    padding = IGNORE_INDEX if key == "labels" else 0
                    if key in used or key == "labels":
                        assert bool((dropped == padding).all()), key
    # Every sample once per stage; longest first: no micro-batch wider than the one before.
    assert sorted(seen) == sorted(ids)
    for mask in used:
        per_micro = [widths[(index, mask)] for index in range(len(micro))]
        assert all(len(w) == 1 for w in per_micro), f"{mask}: devices disagree on a width"
        flat = [w.pop() for w in per_micro]
        assert flat == sorted(flat, reverse=True)
        assert flat == [int(used[mask][members[i]].max()) for i in range(len(micro))]
        assert flat[0] == int(used[mask].max())  # the first holds the mini-batch's longest
        assert computed[mask] < batch[mask].numel()


def test_a_label_past_its_mask_keeps_its_column() -> None:
    batch = causal_lm_batch([4, 2])
    batch["labels"][1, 5] = 17  # a target after the row's last real token
    assert used_columns(batch)["attention_mask"].tolist() == [4, 6]


def test_keys_of_another_width_leave_their_mask_uncut() -> None:
    batch = causal_lm_batch([4, 2, 3])
    batch["labels"] = batch["labels"][:, :3]  # per-token labels that are not the input's
    assert used_columns(batch) == {}
    whole = BatchPart.whole(batch, None, 3)
    assert whole.by_micro_batch(3) is whole


def test_one_micro_batch_keeps_the_mini_batch_as_it_is() -> None:
    whole = BatchPart.whole(causal_lm_batch(LENGTHS), None, 5)
    assert whole.by_micro_batch(1) is whole
    with pytest.raises(ValueError, match="whole mini-batch"):
        whole.select([1, 2], ["input_ids"]).by_micro_batch(2)


def test_the_planner_is_told_the_tokens_each_micro_batch_count_computes() -> None:
    batch = causal_lm_batch([4, 1, 3, 2])  # padded to 6 columns
    # Sorted 4, 3, 2, 1: two micro-batches compute 2 x 4 + 2 x 2 columns of the 24 padded.
    assert token_scale([batch], 2) == pytest.approx(12 / 24)
    assert token_scale([batch], 4) == pytest.approx(10 / 24)
    assert token_scale([batch, causal_lm_batch([5, 5])], 2) == pytest.approx((12 + 10) / (24 + 14))
    # One micro-batch cuts nothing: the per-sample times are measured at the padding.
    assert token_scale([batch], 1) == 1.0


def test_a_short_last_mini_batch_leaves_micro_batches_empty() -> None:
    # The planner may cut a batch of 12 into 6; the epoch's last mini-batch may hold 4.
    micro = micro_batch_rows(4, 6)
    assert sum(stop - start for start, stop in micro) == 4 and len(micro) == 6
    assert sorted(stop - start for start, stop in micro) == [0, 0, 1, 1, 1, 1]
    parts = pipeline_parts(TWO_BY_TWO, BatchPart.whole(causal_lm_batch([3, 1]), None, 2))
    assert sorted(p for d in ("a", "b") for p in parts[d].positions) == [0, 1]
    with pytest.raises(ValueError, match="at least one micro-batch"):
        micro_batch_rows(4, 0)


@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize(
    "batch",
    [causal_lm_batch(LENGTHS), seq2seq_batch(LENGTHS, TARGETS)],
    ids=["causal-lm", "seq2seq"],
)
def test_a_device_alone_through_every_block_computes_its_own_rows_columns(
    batch: dict[str, torch.Tensor], micro_batches: int
) -> None:
    # With one micro-batch (EDDL-like data parallelism) nothing else cuts the columns: a
    # device pads its rows to their own longest, as its own data loader would.
    one_stage = PipelineLayout((StageSpec(0, 4, ("a", "b", "c"), (1.0, 1.0, 1.0)),), micro_batches)
    ids = [f"s{row:02d}" for row in range(len(LENGTHS))]
    parts = pipeline_parts(one_stage, BatchPart.whole(batch, ids, loss_count=5))
    rows_of = {s: row for row, s in enumerate(ids)}
    used = used_columns(batch)
    micro = micro_batch_rows(len(ids), one_stage.micro_batches)
    own_total = shared_total = 0
    for rank, device in enumerate(one_stage.stages[0].devices):
        part = parts[device]
        for span in micro:
            mine = device_rows(span, one_stage.stages[0].shares)[rank]
            if mine[0] == mine[1]:
                continue
            shared, own = part.rows(mine), part.rows(mine, own_columns=True)
            samples = part.ids(mine)
            assert samples is not None
            original = [rows_of[s] for s in samples]
            for mask in used:
                # As wide as its rows' longest, never wider than their micro-batch.
                assert own[mask].shape[1] == int(used[mask][original].max())
                assert own[mask].shape[1] <= shared[mask].shape[1]
                own_total += own[mask].numel()
                shared_total += shared[mask].numel()
            for key, value in own.items():
                # The same values, on fewer columns; what is cut is padding only.
                full = shared[key]
                assert torch.equal(value, full[:, : value.shape[1]] if full.dim() > 1 else full)
                if key in used or key == "labels":
                    padding = IGNORE_INDEX if key == "labels" else 0
                    assert bool((full[:, value.shape[1] :] == padding).all()), key
    assert own_total < shared_total


def test_the_planner_is_told_what_one_stage_groups_compute() -> None:
    from pac.pipeline.micro_columns import one_stage_token_scale

    batches = [causal_lm_batch(LENGTHS), seq2seq_batch(LENGTHS, TARGETS)]
    for m in (2, 3):
        # One device per micro-batch cuts as the micro-batch does.
        assert one_stage_token_scale(batches, m, 1) == pytest.approx(token_scale(batches, m))
    # One micro-batch, one device: the mini-batch as padded (it has a row of its width
    # but for the causal batch's two columns of padding).
    assert one_stage_token_scale(batches[1:], 1, 1) == pytest.approx(1.0)
    for m in (1, 2):
        scales = [one_stage_token_scale(batches, m, n) for n in (1, 2, 3, 11)]
        assert scales == sorted(scales, reverse=True) and scales[-1] < scales[0]
    # A device per row: every row computes its own columns only, the least there is.
    real = sum(int(c.sum()) for b in batches for c in used_columns(b).values())
    padded = sum(b[mask].numel() for b in batches for mask in used_columns(b))
    assert one_stage_token_scale(batches, 1, len(LENGTHS)) == pytest.approx(real / padded)
    # Packed rows compute their own columns only, however they are dealt and cut.
    for m in (1, 3):
        for n in (1, 2, 11):
            packed = one_stage_token_scale(batches, m, n, packed=True)
            assert packed == pytest.approx(real / padded)
            assert packed <= one_stage_token_scale(batches, m, n)
    assert real / padded < one_stage_token_scale(batches, 1, 2)
