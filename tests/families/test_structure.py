"""What techniques rely on besides the forward: adapter points, LoRA targets, head modules,
clear errors for bad model directories, and the real MiniLM checkpoint."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, BertModel

from pac.families import FamilyError, family_for_dir, family_for_model_type
from pac.families.bert import BertFamily

ALL = ("bert", "t5", "bart", "gpt2", "llama", "qwen2")


def _out_features(module: nn.Module) -> int:
    weight: Any = module.weight  # Linear: [out, in]; GPT-2's Conv1D: [in, out]
    return int(weight.shape[1] if type(module).__name__ == "Conv1D" else weight.shape[0])


@pytest.mark.parametrize("name", ALL)
def test_two_adapter_points_per_block(name: str, load_family: Callable) -> None:
    family, _, _ = load_family(name)
    blocks = family.blocks()
    seen: set[int] = set()
    for block in blocks:
        modules = family.adapter_modules(block)
        assert len(modules) == 2, f"block {block.index}: {len(modules)} adapter points"
        assert all(_out_features(m) == family.hidden_size for m in modules)
        seen.update(id(m) for m in modules)
    assert len(seen) == 2 * len(blocks)
    # The same points found by name over the whole model: exact names relative to a block.
    block_prefixes = {
        name_: m for name_, m in family.model.named_modules() if any(m is b.module for b in blocks)
    }
    matched = [
        full
        for full, _ in family.model.named_modules()
        for prefix in block_prefixes
        if full.startswith(prefix + ".") and full[len(prefix) + 1 :] in family.adapter_points
    ]
    assert len(matched) == 2 * len(blocks)


def test_bert_points_are_not_suffix_matched(load_family: Callable) -> None:
    family, _, _ = load_family("bert")
    block = family.blocks()[0]
    names = {id(m): n for n, m in block.module.named_modules()}
    assert sorted(names[id(m)] for m in family.adapter_modules(block)) == [
        "attention.output.dense",
        "output.dense",
    ]


@pytest.mark.parametrize("name", ALL)
def test_lora_targets_hit_every_block(name: str, load_family: Callable) -> None:
    """peft's rule: a module is targeted when its name is a target or ends with "." + it."""
    family, _, _ = load_family(name)
    for block in family.blocks():
        hits = [
            n
            for n, m in block.module.named_modules()
            if any(n == t or n.endswith("." + t) for t in family.lora_targets)
        ]
        assert hits, f"no LoRA target in block {block.index}"


@pytest.mark.parametrize("name", ALL)
def test_head_and_shared_modules_belong_to_the_model(name: str, load_family: Callable) -> None:
    family, _, _ = load_family(name)
    owned = {id(m) for m in family.model.modules()}
    for module in family.head_modules() + family.shared_modules():
        assert id(module) in owned
    if name != "bert":
        assert family.head_modules(), "families with an LM head name it"


@pytest.mark.parametrize("name", ALL)
def test_declared_shape_and_tasks(name: str, load_family: Callable) -> None:
    family, _, _ = load_family(name)
    assert family.hidden_size == 32 and family.num_heads == 4
    assert ("seq2seq" in family.supported_tasks) == family.is_encoder_decoder
    assert ("causal-lm" in family.supported_tasks) == family.causal
    assert {"classification", "regression"} <= family.supported_tasks
    assert family_for_model_type(family.model.config.model_type) is type(family)


def test_missing_config_is_a_clear_error(tmp_path: Path, tiny_model_dir: Callable) -> None:
    broken = tmp_path / "no-config"
    shutil.copytree(tiny_model_dir("t5"), broken)
    (broken / "config.json").unlink()
    with pytest.raises(FamilyError, match=r"no-config.*config\.json is missing"):
        family_for_dir(broken)


@pytest.mark.parametrize("name", ["bert", "t5", "gpt2"])
def test_missing_weights_is_a_clear_error(
    name: str, tmp_path: Path, tiny_model_dir: Callable
) -> None:
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir(name), broken)
    (broken / "model.safetensors").unlink()
    family_cls = family_for_dir(broken)
    with pytest.raises(FamilyError, match=r"no-weights.*model\.safetensors"):
        family_cls.load(broken)


def test_unknown_model_type_lists_the_supported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    with pytest.raises(FamilyError, match=r"'mamba' is not supported.*bart.*t5"):
        family_for_dir(tmp_path)


@torch.no_grad()
def test_real_minilm_matches_bert_model(minilm_dir: Path) -> None:
    family_cls = family_for_dir(minilm_dir)
    assert family_cls is BertFamily
    family = family_cls(family_cls.load(minilm_dir))
    assert (family.hidden_size, family.num_heads, len(family.blocks())) == (384, 12, 6)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    batch = dict(tokenizer(["a fresh, funny film", "rotten."], padding=True, return_tensors="pt"))
    reference = BertModel.from_pretrained(minilm_dir).eval()
    expected = reference(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(
        family.forward_hidden(batch)[mask], expected[mask], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", ALL)
def test_points_also_fit_the_suffix_rule(name: str, load_family: Callable) -> None:
    """A module matched by name == point or name ending in "." + point (any point, each
    module once, over the whole model) is exactly one of the family's adapter modules."""
    family, _, _ = load_family(name)
    by_suffix = {
        id(m)
        for full, m in family.model.named_modules()
        if any(full == p or full.endswith("." + p) for p in family.adapter_points)
    }
    exact = {id(m) for b in family.blocks() for m in family.adapter_modules(b)}
    assert by_suffix == exact
