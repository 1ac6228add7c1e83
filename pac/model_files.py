"""The files of a local Hugging Face model directory that hold its weights (free of torch:
the coordinator checks a job's model directory with it)."""

from __future__ import annotations

# Any one of these holds the weights (sharded checkpoints have an index file).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
