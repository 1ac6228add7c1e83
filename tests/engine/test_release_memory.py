"""Releasing the backbone gives its memory back to the operating system: the process's
resident memory drops by about the bytes of the weights released (weights that stayed
memory-mapped from the safetensors file would stay resident)."""

from __future__ import annotations

import gc
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from pac.engine.loading import load_model
from pac.engine.memory import freeze_startup_objects, release_backbone, rss_bytes


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


def test_frozen_startup_objects_leave_later_cycles_collectable() -> None:
    # The agent freezes what its imports left (pac/engine/memory.py): a full collection
    # skips those, yet a cycle made afterwards (a tensor in it) is still collected.
    frozen = freeze_startup_objects()
    try:
        # (A frozen object that its last reference lets go of still leaves the permanent
        # generation: the count can only drop, by the few that other threads free.)
        assert 0 < gc.get_freeze_count() <= frozen

        class Holder:
            pass

        holder = Holder()
        holder.itself = holder  # type: ignore[attr-defined]
        holder.tensor = torch.zeros(1 << 16)  # type: ignore[attr-defined]
        alive = weakref.ref(holder)
        del holder
        gc.collect()
        assert alive() is None
        # The collection left the frozen objects frozen (it did not walk or unfreeze them).
        assert frozen // 2 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
