"""BART (``BartForConditionalGeneration``): post-LN encoder and decoder with learned
positions, a LayerNorm on the embeddings and a tied LM head plus ``final_logits_bias``.

State: as T5 (``hidden``, ``attention_mask``, ``decoder_hidden`` + ``decoder_attention_mask``
until the first decoder block, then ``encoder_hidden`` + ``encoder_attention_mask``). BART
has no final norm in either stack: every block ends with its own LayerNorm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BartForConditionalGeneration, PreTrainedModel

from pac.families import register
from pac.families.base import Block, ModelFamily, State
from pac.families.encoder_decoder import decoder_inputs, switch_to_decoder
from pac.families.loading import first, from_pretrained
from pac.families.masks import causal_mask, padding_mask


@register
class BartFamily(ModelFamily):
    name = "bart"
    model_types = ("bart",)
    is_encoder_decoder = True
    supported_tasks = frozenset({"classification", "regression", "seq2seq"})
    lora_targets = ("q_proj", "v_proj")
    # Exact names inside a BART layer (encoder_attn.out_proj is not one of them).
    adapter_points = ("self_attn.out_proj", "fc2")

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        hf: Any = model
        self._encoder, self._decoder = hf.model.encoder, hf.model.decoder
        self._lm_head: nn.Linear = hf.lm_head
        self._shared: nn.Embedding = hf.model.shared
        # A buffer of the top-level model, not of a head module: kept here so that the head
        # still works once the backbone is released.
        self._final_logits_bias: torch.Tensor = hf.final_logits_bias
        self._num_encoder_blocks = len(self._encoder.layers)

    @classmethod
    def load(cls, model_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
        return from_pretrained(BartForConditionalGeneration, model_dir, dtype)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.encoder_attention_heads)

    def blocks(self) -> list[Block]:
        n = self._num_encoder_blocks
        return [Block(i, "encoder", b) for i, b in enumerate(self._encoder.layers)] + [
            Block(n + i, "decoder", b) for i, b in enumerate(self._decoder.layers)
        ]

    def embed(self, batch: dict[str, torch.Tensor]) -> State:
        """Scaled token embeddings + learned positions (offset 2 inside the module), then
        ``layernorm_embedding``, for both stacks. Without ``decoder_input_ids`` the decoder
        gets one ``decoder_start_token_id`` per sample."""
        dec_ids, dec_mask = decoder_inputs(batch, self.model.config.decoder_start_token_id)
        return {
            "hidden": _embed(self._encoder, batch["input_ids"]),
            "attention_mask": batch["attention_mask"],
            "decoder_hidden": _embed(self._decoder, dec_ids),
            "decoder_attention_mask": dec_mask,
        }

    def run_block(self, index: int, state: State) -> State:
        n = self._num_encoder_blocks
        if index < n:
            hidden = state["hidden"]
            mask = padding_mask(state["attention_mask"], hidden.dtype)
            return {**state, "hidden": first(self._encoder.layers[index](hidden, mask))}
        if index == n:
            state = switch_to_decoder(state, None)
        hidden = state["hidden"]
        out = self._decoder.layers[index - n](
            hidden,
            attention_mask=causal_mask(state["attention_mask"], hidden.dtype),
            encoder_hidden_states=state["encoder_hidden"],
            encoder_attention_mask=padding_mask(state["encoder_attention_mask"], hidden.dtype),
            use_cache=False,
        )
        return {**state, "hidden": first(out)}

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def lm_logits(self, final: torch.Tensor) -> torch.Tensor:
        return self._lm_head(final) + self._final_logits_bias.to(final.dtype)

    def head_modules(self) -> list[nn.Module]:
        return [self._lm_head, self._shared]


def _embed(stack: Any, ids: torch.Tensor) -> torch.Tensor:
    # [batch, seq] -> [batch, seq, d]; positions 0..seq-1 (right padding).
    hidden = stack.layernorm_embedding(stack.embed_tokens(ids) + stack.embed_positions(ids))
    return nn.functional.dropout(hidden, p=stack.dropout, training=stack.training)
