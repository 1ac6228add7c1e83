"""Loading a family's backbone from a local Hugging Face directory, with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from pac.families.base import FamilyError

# Any one of these holds the weights (sharded checkpoints have an index file).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Every family loads with PyTorch's scaled_dot_product_attention: it matches the eager
# implementation within 1e-6 on the CPU (checked in tests/families) and is faster.
ATTN_IMPLEMENTATION = "sdpa"


def check_model_dir(model_dir: Path) -> None:
    """Raise FamilyError naming the missing file when ``model_dir`` lacks a config or weights."""
    if not model_dir.is_dir():
        raise FamilyError(f"model directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise FamilyError(
            f"{model_dir} is not a Hugging Face model directory: config.json is missing"
        )
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise FamilyError(
            f"{model_dir} has no weights: expected model.safetensors (or pytorch_model.bin); "
            "save the model with save_pretrained into this directory"
        )


def from_pretrained(model_class: Any, model_dir: Path, dtype: torch.dtype) -> PreTrainedModel:
    """``model_class.from_pretrained`` in eval mode (no dropout). Gradients stay on: the
    technique decides what to freeze.

    The weights are read into the process's own memory, not memory-mapped from the
    safetensors file: a mapping outlives the parameters (the loader keeps it), so releasing
    the backbone after epoch 1 would not give its pages back."""
    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    model: PreTrainedModel = model_class.from_pretrained(
        str(model_dir), dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION, disable_mmap=True
    )
    model.eval()
    return model


def first(output: Any) -> torch.Tensor:
    """A block's hidden state whether the block returns a tensor or a tuple (versions differ)."""
    return output[0] if isinstance(output, tuple) else output
