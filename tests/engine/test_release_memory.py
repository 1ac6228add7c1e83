"""Releasing the backbone gives its memory back to the operating system: the process's
resident memory drops by about the bytes of the weights released (weights that stayed
memory-mapped from the safetensors file would stay resident)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from pac.engine.loading import load_model
from pac.engine.memory import release_backbone, rss_bytes


def test_released_weights_leave_resident_memory(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    # A T5 big enough (about 100 MB of weights) that the drop stands out of the noise.
    model_dir = tmp_path / "t5"
    config = T5Config(
        d_model=384, d_ff=1536, num_layers=4, num_decoder_layers=4, num_heads=6,
        vocab_size=32128,
    )
    T5ForConditionalGeneration(config).save_pretrained(model_dir)
    for tokenizer_file in tiny_model_dir("t5").iterdir():
        if "token" in tokenizer_file.name:
            shutil.copy(tokenizer_file, model_dir / tokenizer_file.name)

    loaded = load_model(model_dir)
    with torch.no_grad():  # touch every weight, as epoch 1's forwards do
        assert all(torch.isfinite(p).all() for p in loaded.family.model.parameters())
    before = rss_bytes()
    released = release_backbone(loaded.family, keep_lm_head=False)
    dropped = before - rss_bytes()
    assert released > 50 << 20
    assert dropped > 0.7 * released, (released, dropped)
