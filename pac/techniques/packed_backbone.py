"""The frozen backbone's linear layers on inference kernels: weights prepacked by oneDNN.

Parallel adapters never differentiate the backbone, so its linear layers can run the way
PyTorch runs frozen inference weights (what inductor's freezing and Intel's extension do):
each weight is reordered once into oneDNN's blocked layout and every call multiplies by it
directly. aten's float32 matmul goes to MKL, which on some CPUs (AMD's, this project's
test machine among them) takes a generic path; there the prepacked kernel is about twice
as fast, with float32 results (equal to ``F.linear`` up to rounding). Techniques that
backpropagate through the backbone (LoRA, adapters, full fine-tuning) cannot use it: the
prepacked op has no backward.

Only the blocks' linears are packed: the embeddings, final norms and heads stay ordinary
modules, because the side network's output flows back through the head.
"""

from __future__ import annotations

import torch
from torch import nn

from pac.families import ModelFamily

# Rows (batch x tokens) the reorder is tuned for; any row count works.
ROWS_HINT = 2048


def packing_supported(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether oneDNN's prepacked linear runs here: a CPU build with oneDNN, float32
    weights, or bfloat16 ones on a CPU whose instructions oneDNN's bfloat16 kernels need
    (AVX-512 BW/VL/DQ or AVX-NE-CONVERT; without them the reorder raises)."""
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and (dtype != torch.bfloat16 or _bf16_kernels())
    )


def _bf16_kernels() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return check is not None and bool(check())


class PackedLinear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is prepacked for oneDNN; forward only."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, rows_hint: int = ROWS_HINT) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.dense_bytes = weight.numel() * weight.element_size()
        # ``weight`` keeps its name and dtype: model code reads ``module.weight.dtype``.
        self.register_buffer(
            "weight", torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint), persistent=False
        )
        bias = None if linear.bias is None else linear.bias.detach()
        if bias is not None:
            self.dense_bytes += bias.numel() * bias.element_size()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., in_features]`` -> ``[..., out_features]``, without autograd."""
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(
                "a prepacked backbone linear has no backward: only a frozen backbone run "
                "under torch.no_grad() may be packed"
            )
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def release(self) -> int:
        """Free the packed weight (the backbone's release); returns the dense bytes freed."""
        freed = self.dense_bytes if self.weight.numel() else 0
        self.weight = torch.empty(0, dtype=self.weight.dtype)
        if self.bias is not None:
            self.bias = torch.empty(0, dtype=self.bias.dtype)
        self.dense_bytes = 0
        return freed

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def pack_block_linears(family: ModelFamily, only: tuple[int, ...] | None = None) -> int:
    """Replace every ``nn.Linear`` inside the family's blocks (``only``: the blocks of
    those indices) by a ``PackedLinear`` (the backbone must be frozen); returns how many
    were packed, 0 where packing is not supported. A block packed already is left as it is."""
    first = next(family.model.parameters())
    if not packing_supported(first.dtype, first.device):
        return 0
    packed = 0
    for block in family.blocks():
        if only is not None and block.index not in only:
            continue
        for parent in list(block.module.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear and not child.weight.requires_grad:
                    setattr(parent, name, PackedLinear(child))
                    packed += 1
    return packed


def release_packed(model: nn.Module) -> int:
    """Free every packed weight in ``model``; returns the dense bytes freed."""
    return sum(m.release() for m in model.modules() if isinstance(m, PackedLinear))
