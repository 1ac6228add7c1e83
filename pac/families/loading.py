"""Loading a family's backbone from a local Hugging Face directory, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoConfig, PreTrainedModel

from pac.families.base import FamilyError
from pac.model_files import WEIGHT_FILES

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
    the backbone after epoch 1 would not give its pages back. They are read one tensor at a
    time (:func:`read_safetensors`): transformers' unmapped read decodes the whole file in
    one call that holds the GIL, which on the BERT-large shape (1.3 GB) kept an agent's
    event loop from answering its health checks for half a second alone, and for seconds
    with four agents loading on two cores, so that the coordinator took them for frozen."""
    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    files = safetensors_files(model_dir)
    if not files:  # pytorch_model.bin: transformers reads it
        model: PreTrainedModel = model_class.from_pretrained(
            str(model_dir), dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION, disable_mmap=True
        )
    else:
        config = AutoConfig.from_pretrained(str(model_dir))
        # An auto class loads no state dict itself: the class it stands for does.
        concrete = model_class
        mapping = getattr(model_class, "_model_mapping", None)
        if mapping is not None:
            try:
                concrete = mapping[type(config)]
            except KeyError:
                raise FamilyError(
                    f"{model_dir}: transformers has no {model_class.__name__} for model type "
                    f"{config.model_type!r}"
                ) from None
        model = concrete.from_pretrained(
            None,
            config=config,
            state_dict=read_safetensors(files),
            dtype=dtype,
            attn_implementation=ATTN_IMPLEMENTATION,
        )
    model.eval()
    return model


def safetensors_files(model_dir: Path) -> list[Path]:
    """The safetensors files that hold ``model_dir``'s weights (the shards its index names),
    or none when it has only ``pytorch_model.bin`` weights."""
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    index = model_dir / "model.safetensors.index.json"
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        raise FamilyError(f"{index} is not a safetensors index: {error}") from None
    return [model_dir / name for name in sorted(set(weight_map.values()))]


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of ``files``, each copied into its own memory as it is read (the copy
    lets the GIL go); no mapping of the files is left open."""
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                tensors[name] = handle.get_tensor(name).clone()
    return tensors


def first(output: Any) -> torch.Tensor:
    """A block's hidden state whether the block returns a tensor or a tuple (versions differ)."""
    return output[0] if isinstance(output, tuple) else output
