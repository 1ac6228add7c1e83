"""Loaded tiny families and right-padded batches for the family tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pac.families import ModelFamily, family_for_dir

ALL = ("bert", "t5", "bart", "gpt2", "llama", "qwen2")
SOURCES = [
    "The film was good today.",
    "A critic is dull.",
    "Every scene in this movie feels brilliant and moving, without doubt, to me and my friend.",
]
TARGETS = ["fresh", "rotten and very slow", "good"]

Loaded = tuple[ModelFamily, PreTrainedTokenizerBase, Path]


@pytest.fixture(scope="session")
def load_family(tiny_model_dir: Callable[[str], Path]) -> Callable[[str], Loaded]:
    """``load_family("t5")`` -> (family over the loaded model, its tokenizer, its directory),
    through the real path: ``family_for_dir(dir).load(dir)``."""
    cache: dict[str, Loaded] = {}

    def get(name: str) -> Loaded:
        if name not in cache:
            model_dir = tiny_model_dir(name)
            family_cls = family_for_dir(model_dir)
            family = family_cls(family_cls.load(model_dir))
            cache[name] = (family, AutoTokenizer.from_pretrained(model_dir), model_dir)
        return cache[name]

    return get


def make_batch(family: ModelFamily, tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Three right-padded samples of different lengths (and targets for encoder-decoders)."""
    enc = tokenizer(SOURCES, padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    assert bool((batch["attention_mask"].sum(1) < batch["attention_mask"].shape[1]).any())
    if family.is_encoder_decoder:
        dec = tokenizer(TARGETS, padding=True, return_tensors="pt")
        batch["decoder_input_ids"] = dec["input_ids"]
        batch["decoder_attention_mask"] = dec["attention_mask"]
    return batch


@pytest.fixture
def batch_for() -> Callable[[ModelFamily, PreTrainedTokenizerBase], dict[str, torch.Tensor]]:
    return make_batch
