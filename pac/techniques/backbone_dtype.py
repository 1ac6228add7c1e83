"""The frozen backbone's dtype: float32 (the default) or bfloat16.

A technique that freezes the backbone (parallel adapters, LoRA, bottleneck adapters) may
hold and run it in bfloat16, like QLoRA's low-precision frozen base: on a CPU with
avx512_bf16 or AMX (and on a GPU) its matmuls run several times faster, and PAC caches the
backbone's outputs at fp16 anyway. What trains stays float32: each technique casts where its
float32 modules read the backbone. Full fine-tuning trains the backbone itself and stays
float32.

The choice travels as the technique setting ``"backbone_dtype"``: ``pac train
--backbone-dtype``, a mesh job's technique settings (every device loads its replica with
it) and the export's ``adapter_config.json`` (``pac predict`` loads the backbone with it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

SETTING = "backbone_dtype"
DEFAULT = "float32"
# Accepted spellings -> dtype; the first spelling of each dtype is its canonical name.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
HALF_DTYPES = (torch.bfloat16, torch.float16)


def parse_backbone_dtype(value: str | torch.dtype | None) -> torch.dtype:
    """``"float32"``/``"fp32"``/``"bfloat16"``/``"bf16"`` (or a dtype) -> the dtype;
    ``None`` -> float32. Raises ValueError for anything else."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    dtype = DTYPES.get(str(value).strip().lower())
    if dtype is None:
        raise ValueError(
            f"unknown backbone dtype {value!r}; choose one of {', '.join(DTYPES)} "
            "(bfloat16 runs the frozen backbone in bf16; what trains stays float32)"
        )
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The canonical name of ``dtype`` (``"float32"``, ``"bfloat16"``, ``"float64"`` ...)."""
    return str(dtype).removeprefix("torch.")


def backbone_dtype_of(settings: Mapping[str, Any] | None) -> torch.dtype:
    """The backbone dtype a technique's settings ask for (float32 when they do not say)."""
    return parse_backbone_dtype((settings or {}).get(SETTING))


def with_backbone_dtype(settings: Mapping[str, Any], dtype: str | torch.dtype) -> dict[str, Any]:
    """``settings`` plus the canonical ``"backbone_dtype"`` entry; float32 (the default) is
    left out, so a float32 run's settings read as they did before the option existed."""
    out = {k: v for k, v in settings.items() if k != SETTING}
    parsed = parse_backbone_dtype(dtype)
    if parsed != torch.float32:
        out[SETTING] = dtype_name(parsed)
    return out


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter (float32 when it has none).
    Still right after the backbone is released: released parameters keep their dtype."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32
