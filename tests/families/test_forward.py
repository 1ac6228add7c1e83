"""Each family's flat view (embed -> blocks -> final norm -> LM head) equals the Hugging Face
model's own forward on right-padded batches, also when cut into two stages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import safetensors.torch
import torch

from pac.families import ModelFamily

ALL = ("bert", "t5", "bart", "gpt2", "llama", "qwen2")
WITH_LM_HEAD = ("t5", "bart", "gpt2", "llama", "qwen2")


def hf_reference(family: ModelFamily, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
    """(last hidden state after the final norm, LM logits or None) from HF's own forward."""
    hf: Any = family.model
    if family.name == "bert":
        return hf(**batch).last_hidden_state, None
    if family.name == "t5":
        out = hf(**batch)
        enc = hf.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        dec = hf.get_decoder()(
            input_ids=batch["decoder_input_ids"],
            attention_mask=batch["decoder_attention_mask"],
            encoder_hidden_states=enc.last_hidden_state,
            encoder_attention_mask=batch["attention_mask"],
        )
        return dec.last_hidden_state, out.logits
    if family.name == "bart":
        return hf.model(**batch).last_hidden_state, hf(**batch).logits
    base = hf.transformer if family.name == "gpt2" else hf.model
    return base(**batch).last_hidden_state, hf(**batch).logits


def real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` ``[batch, seq, ...]`` at real (non-pad) positions."""
    return x[mask.bool()]


def output_mask(family: ModelFamily, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    key = "decoder_attention_mask" if family.is_encoder_decoder else "attention_mask"
    return batch[key]


@pytest.mark.parametrize("name", ALL)
@torch.no_grad()
def test_forward_hidden_equals_hf(name: str, load_family: Callable, batch_for: Callable) -> None:
    family, tokenizer, _ = load_family(name)
    batch = batch_for(family, tokenizer)
    expected, expected_logits = hf_reference(family, batch)
    mask = output_mask(family, batch)
    ours = family.forward_hidden(batch)
    assert ours.shape == expected.shape
    torch.testing.assert_close(real(ours, mask), real(expected, mask), atol=1e-5, rtol=1e-5)
    if name in WITH_LM_HEAD:
        logits = family.lm_logits(ours)
        torch.testing.assert_close(
            real(logits, mask), real(expected_logits, mask), atol=1e-5, rtol=1e-5
        )
    else:
        with pytest.raises(ValueError, match="no language-model head"):
            family.lm_logits(ours)


@pytest.mark.parametrize("name", ALL)
@torch.no_grad()
def test_two_stages_equal_one_pass(name: str, load_family: Callable, batch_for: Callable) -> None:
    """Cut the blocks at every boundary; the state crosses it as a safetensors blob."""
    family, tokenizer, _ = load_family(name)
    batch = batch_for(family, tokenizer)
    blocks = family.blocks()
    assert [b.index for b in blocks] == list(range(len(blocks)))
    whole = family.forward_hidden(batch)
    for cut in range(1, len(blocks)):
        state = family.embed(batch)
        for block in blocks[:cut]:
            state = family.run_block(block.index, state)
        rows = batch["input_ids"].shape[0]
        assert all(t.shape[0] == rows for t in state.values()), "batch-first state tensors"
        state = safetensors.torch.load(safetensors.torch.save(state))
        for block in blocks[cut:]:
            state = family.run_block(block.index, state)
        torch.testing.assert_close(family.final_hidden(state["hidden"]), whole, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["t5", "bart"])
@torch.no_grad()
def test_encoder_decoder_state_switch(
    name: str, load_family: Callable, batch_for: Callable
) -> None:
    family, tokenizer, _ = load_family(name)
    batch = batch_for(family, tokenizer)
    state = family.embed(batch)
    assert set(state) == {"hidden", "attention_mask", "decoder_hidden", "decoder_attention_mask"}
    first_decoder = next(b.index for b in family.blocks() if b.stack == "decoder")
    for index in range(first_decoder + 1):
        state = family.run_block(index, state)
    assert set(state) == {"hidden", "attention_mask", "encoder_hidden", "encoder_attention_mask"}
    assert torch.equal(state["attention_mask"], batch["decoder_attention_mask"])
    assert torch.equal(state["encoder_attention_mask"], batch["attention_mask"])
    assert state["hidden"].shape[1] == batch["decoder_input_ids"].shape[1]


@pytest.mark.parametrize("name", ["t5", "bart"])
@torch.no_grad()
def test_decoder_defaults_to_one_start_token(name: str, load_family: Callable) -> None:
    family, tokenizer, _ = load_family(name)
    enc = tokenizer(["A critic is dull."], return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    start = family.model.config.decoder_start_token_id
    explicit = {**batch, "decoder_input_ids": torch.tensor([[start]])}
    assert family.forward_hidden(batch).shape == (1, 1, family.hidden_size)
    torch.testing.assert_close(family.forward_hidden(batch), family.forward_hidden(explicit))


@pytest.mark.parametrize("name", ALL)
@torch.no_grad()
def test_eager_attention_gives_the_same_hidden(
    name: str, load_family: Callable, batch_for: Callable
) -> None:
    """The families load with sdpa; their masks work unchanged under eager attention."""
    family, tokenizer, model_dir = load_family(name)
    batch = batch_for(family, tokenizer)
    eager_model = type(family.model).from_pretrained(model_dir, attn_implementation="eager")
    eager = type(family)(eager_model.eval())
    mask = output_mask(family, batch)
    torch.testing.assert_close(
        real(eager.forward_hidden(batch), mask),
        real(family.forward_hidden(batch), mask),
        atol=1e-5,
        rtol=1e-5,
    )
