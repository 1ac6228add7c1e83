"""A one-stage parallel-adapters step packs its rows (pac.families.row_packing): the
backbone computes the real tokens only, as one row, and the step's loss, gradients and
cached ladder points equal the padded computation's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pac.engine.loading import load_model
from pac.families import row_packing
from pac.families.row_packing import pack_rows, packed_groups, segment_mask, unpack_rows
from pac.pipeline.stage import SideStage, stage_computation
from pac.tasks import TaskSpec
from pac.techniques.parallel_adapters import ParallelAdaptersConfig, ParallelAdaptersModel
from pac.techniques.parallel_adapters.ladder import run_backbone_packed

TASK = TaskSpec("classification", labels=("neg", "pos"))
LENGTHS = [9, 3, 7, 1, 5]


def _batch(lengths: list[int], width: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(5, 60, (length,), generator=generator)
        mask[row, :length] = 1
    labels = torch.tensor([row % 2 for row in range(len(lengths))])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_packing_keeps_the_real_tokens_in_order_and_unpacking_restores_them() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    hidden = torch.randn(3, 4, 6)
    packed = pack_rows(hidden, mask)
    assert packed["hidden"].shape == (1, 6, 6)
    assert packed["segments"].tolist() == [[0, 0, 0, 1, 2, 2]]
    assert torch.equal(packed["hidden"][0, 3], hidden[1, 0])
    back = unpack_rows(packed["hidden"], mask)
    assert torch.equal(back[mask.bool()], hidden[mask.bool()])
    assert not back[~mask.bool()].any()  # padding comes back as zeros
    blocked = segment_mask(packed["segments"], torch.float32)[0, 0] < 0
    assert blocked.shape == (6, 6)
    assert not blocked[:3, :3].any() and blocked[:3, 3:].all()  # row 0 sees only row 0
    assert blocked[3].tolist() == [True, True, True, False, True, True]


def test_rows_are_packed_in_consecutive_groups_of_a_token_budget() -> None:
    mask = torch.zeros(5, 12, dtype=torch.long)
    for row, length in enumerate([9, 3, 7, 1, 12]):
        mask[row, :length] = 1
    assert packed_groups(mask, 10) == [(0, 1), (1, 3), (3, 4), (4, 5)]  # 12 > 10 goes alone
    assert packed_groups(mask, 100) == [(0, 5)]
    assert packed_groups(mask[:0], 10) == []


def _step(model: ParallelAdaptersModel, batch: dict[str, torch.Tensor], pack: bool) -> tuple:
    stage = stage_computation(model, 0, len(model.family.blocks()))
    assert isinstance(stage, SideStage) and stage.packs == pack
    output = stage.forward({}, batch)
    assert output.loss is not None
    output.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return output.loss.detach(), grads, output.points


@pytest.mark.parametrize(
    ("source", "budget"), [("tiny-bert", 256), ("tiny-bert", 10), ("minilm", 256)]
)
def test_a_packed_step_equals_the_padded_one(
    source: str,
    budget: int,
    tiny_model_dir: Callable[[str], Path],
    minilm_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In one packed row, and in groups (a budget of 10 tokens: 9 | 3 7 | 1 5)."""
    monkeypatch.setattr(row_packing, "PACK_TOKENS", budget)
    model_dir = tiny_model_dir("bert") if source == "tiny-bert" else minilm_dir
    batch = _batch(LENGTHS, max(LENGTHS) + 2)  # two columns no row uses
    results = []
    for pack in (False, True):
        torch.manual_seed(3)  # the same side network for both
        config = ParallelAdaptersConfig(pack_rows=pack)
        model = ParallelAdaptersModel(load_model(model_dir).family, TASK, config)
        results.append(_step(model, batch, pack))
    (loss, grads, points), (packed_loss, packed_grads, packed_points) = results
    assert torch.allclose(packed_loss, loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == packed_grads.keys() and len(grads) > 4
    for name, grad in grads.items():
        assert torch.allclose(packed_grads[name], grad, rtol=1e-4, atol=1e-5), name
    real = batch["attention_mask"].bool()
    assert points.keys() == packed_points.keys()
    for name, point in points.items():
        assert packed_points[name].shape == point.shape
        assert torch.allclose(packed_points[name][real], point[real], atol=1e-4), name


def test_rows_are_packed_only_through_every_block_of_a_family_that_packs(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    bert = ParallelAdaptersModel(load_model(tiny_model_dir("bert")).family, TASK)
    blocks = len(bert.family.blocks())
    assert blocks >= 2
    first_half = stage_computation(bert, 0, blocks // 2)
    assert isinstance(first_half, SideStage) and not first_half.packs  # a pipeline stage
    llama = ParallelAdaptersModel(load_model(tiny_model_dir("llama")).family, TASK)
    whole = stage_computation(llama, 0, len(llama.family.blocks()))
    assert isinstance(whole, SideStage) and not whole.packs  # rotary positions per block
    state = {"hidden": torch.zeros(1, 2, 4), "attention_mask": torch.ones(1, 2)}
    with pytest.raises(ValueError, match="does not run packed rows"):
        run_backbone_packed(llama.family, state, 0, 1, [])
