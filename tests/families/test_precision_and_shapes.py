"""Half-precision loading, RoBERTa through the BERT family, and the benchmark shapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, RobertaConfig, RobertaModel

from pac.families import family_for_dir
from pac.testing.tiny_models import build_tiny_model

ALL = ("bert", "t5", "bart", "gpt2", "llama", "qwen2")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ALL)
@torch.no_grad()
def test_half_precision_stays_close_to_fp32(
    name: str, dtype: torch.dtype, load_family: Callable, batch_for: Callable
) -> None:
    family32, tokenizer, model_dir = load_family(name)
    batch = batch_for(family32, tokenizer)
    family_cls = type(family32)
    half = family_cls(family_cls.load(model_dir, dtype=dtype))
    assert next(half.model.parameters()).dtype == dtype
    out = half.forward_hidden(batch)
    assert out.dtype == dtype
    mask = batch["decoder_attention_mask" if half.is_encoder_decoder else "attention_mask"].bool()
    expected = family32.forward_hidden(batch)[mask]
    torch.testing.assert_close(out[mask].float(), expected, atol=0.1, rtol=0.05)


@torch.no_grad()
def test_roberta_loads_as_bert_family(tmp_path: Path, tiny_model_dir: Callable) -> None:
    # A tiny RoBERTa that reuses the tiny BERT tokenizer (RoBERTa pads with id 1).
    bert_dir = tiny_model_dir("bert")
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
    )
    RobertaModel(config).save_pretrained(tmp_path)
    family_cls = family_for_dir(tmp_path)
    assert family_cls.name == "bert"
    family = family_cls(family_cls.load(tmp_path))
    batch = dict(tokenizer(["a good film", "the plot was dull today"], padding=True,
                           return_tensors="pt"))
    expected = family.model(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(family.forward_hidden(batch)[mask], expected[mask], atol=1e-5,
                               rtol=1e-5)
    assert all(len(family.adapter_modules(b)) == 2 for b in family.blocks())


def test_tiny_models_are_deterministic(tmp_path: Path) -> None:
    first = build_tiny_model("gpt2", tmp_path / "a", seed=3)
    again = build_tiny_model("gpt2", tmp_path / "b", seed=3)
    other = build_tiny_model("gpt2", tmp_path / "c", seed=4)
    weights = [(d / "model.safetensors").read_bytes() for d in (first, again, other)]
    assert weights[0] == weights[1] != weights[2]
    assert (first / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


@pytest.mark.parametrize("name", ALL)
def test_tokenizer_and_config_agree(name: str, tiny_model_dir: Callable) -> None:
    model_dir = tiny_model_dir(name)
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert 300 <= len(tokenizer) <= config["vocab_size"]
    assert tokenizer.pad_token_id == config["pad_token_id"] is not None
    assert tokenizer.padding_side == "right"
    ids = tokenizer("The film was good today.")["input_ids"]
    if name == "bert":
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    if name in ("t5", "bart"):
        assert ids[-1] == tokenizer.eos_token_id == config["eos_token_id"]
        assert config["decoder_start_token_id"] is not None
    if name == "bart":
        assert ids[0] == tokenizer.bos_token_id == 0 and tokenizer.pad_token_id == 1
    if name == "t5":
        assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    if name in ("gpt2", "llama", "qwen2"):
        assert tokenizer.eos_token_id == config["eos_token_id"] is not None


def test_t5_small_shape_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown family"):
        build_tiny_model("mamba", tmp_path)
    with pytest.raises(ValueError, match="'t5' only"):
        build_tiny_model("bert", tmp_path, size="t5-small")


@torch.no_grad()
def test_qwen2_sliding_window_layers_match_hf(tmp_path: Path, tiny_model_dir: Callable) -> None:
    """Qwen2 with sliding-window attention on its upper layers (window 4 < sequence)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("qwen2"))
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
        sliding_window=4, max_window_layers=1, pad_token_id=tokenizer.pad_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    family_cls = family_for_dir(tmp_path)
    family = family_cls(family_cls.load(tmp_path))
    assert family.model.config.layer_types[1:] == ["sliding_attention"] * 2
    batch = dict(tokenizer(["The good film watched the friend today again and again.", "A dog."],
                           padding=True, return_tensors="pt"))
    expected = family.model.model(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(family.forward_hidden(batch)[mask], expected[mask], atol=1e-5,
                               rtol=1e-5)
