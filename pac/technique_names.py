"""The techniques by name, without importing them (torch, transformers): what command lines
and job validation need to check a request."""

from __future__ import annotations

TECHNIQUE_NAMES = ("parallel-adapters", "full", "lora", "adapters")
# Techniques whose trained modules take a job's ``dropout``: the side blocks' residual
# branches, LoRA's input to A. The others train at the model's own dropout (config.json).
DROPOUT_TECHNIQUES = ("parallel-adapters", "lora")
