"""The frozen backbone on prepacked oneDNN linears: same results as the ordinary modules,
forward only, and released with the backbone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from pac.engine.loading import load_model
from pac.engine.memory import release_backbone
from pac.tasks import TaskSpec
from pac.techniques.packed_backbone import PackedLinear, packing_supported
from pac.techniques.parallel_adapters import ParallelAdaptersConfig, ParallelAdaptersModel

pytestmark = pytest.mark.skipif(
    not packing_supported(torch.float32, torch.device("cpu")),
    reason="this torch build has no oneDNN prepacked linear (the module then stays unpacked)",
)
TASK = TaskSpec("classification", labels=("neg", "pos"))
UNPACKED = ParallelAdaptersConfig(packed_backbone=False)


BF16_KERNELS = pytest.mark.skipif(
    not packing_supported(torch.bfloat16, torch.device("cpu")),
    reason="this CPU lacks the instructions of oneDNN's bfloat16 kernels (AVX-512 or "
    "AVX-NE-CONVERT): a bfloat16 backbone stays unpacked",
)


@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    [(torch.float32, 1e-5), pytest.param(torch.bfloat16, 2e-2, marks=BF16_KERNELS)],
)
def test_a_packed_linear_equals_the_linear(dtype: torch.dtype, tolerance: float) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 80).to(dtype).requires_grad_(False)
    x = torch.randn(3, 11, 48).to(dtype)
    packed = PackedLinear(linear)
    assert packed.weight.dtype == dtype
    with torch.no_grad():
        expected, got = linear(x).float(), packed(x).float()
        # A non-contiguous input (a transposed view) too.
        view = x.transpose(0, 1)
        assert torch.allclose(packed(view).float(), linear(view).float(), atol=tolerance)
    assert got.shape == (3, 11, 80)
    assert torch.allclose(got, expected, atol=tolerance, rtol=tolerance)


def test_a_packed_linear_refuses_a_backward() -> None:
    packed = PackedLinear(nn.Linear(8, 4).requires_grad_(False))
    with pytest.raises(RuntimeError, match="no backward"):
        packed(torch.randn(2, 8, requires_grad=True))


def ladder_of(model: ParallelAdaptersModel, family: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    batch = {
        "input_ids": torch.randint(5, 60, (3, 9)),
        "attention_mask": torch.ones(3, 9, dtype=torch.long),
    }
    batch["attention_mask"][1, 6:] = 0
    if family in ("t5", "bart"):
        batch["decoder_input_ids"] = torch.randint(5, 60, (3, 4))
        batch["decoder_attention_mask"] = torch.ones(3, 4, dtype=torch.long)
    return model.ladder(batch)


@pytest.mark.parametrize("family", ["bert", "t5", "bart", "llama", "gpt2"])
def test_the_packed_backbone_gives_the_same_ladder(
    family: str, tiny_model_dir: Callable[[str], Path]
) -> None:
    packed = ParallelAdaptersModel(load_model(tiny_model_dir(family)).family, TASK)
    plain = ParallelAdaptersModel(load_model(tiny_model_dir(family)).family, TASK, UNPACKED)
    count = sum(isinstance(m, PackedLinear) for m in packed.family.model.modules())
    if family == "gpt2":  # GPT-2's blocks use Conv1D, not nn.Linear: nothing to pack
        assert count == 0
    else:
        assert count > 0
    assert not any(isinstance(m, PackedLinear) for m in plain.family.model.modules())
    ours, reference = ladder_of(packed, family), ladder_of(plain, family)
    assert ours.keys() == reference.keys()
    for point in ours:
        assert torch.allclose(ours[point], reference[point], atol=1e-5, rtol=1e-4), point


def test_the_release_frees_the_packed_weights(tiny_model_dir: Callable[[str], Path]) -> None:
    packed = ParallelAdaptersModel(load_model(tiny_model_dir("t5")).family, TASK)
    plain = ParallelAdaptersModel(load_model(tiny_model_dir("t5")).family, TASK, UNPACKED)
    freed_packed = release_backbone(packed.family, keep_lm_head=False)
    assert freed_packed == release_backbone(plain.family, keep_lm_head=False)
    assert all(
        m.weight.numel() == 0 for m in packed.family.model.modules() if isinstance(m, PackedLinear)
    )
