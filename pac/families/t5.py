"""T5 (``T5ForConditionalGeneration``): encoder blocks, then decoder blocks, pre-LN with RMS
norms, relative position bias and a tied LM head.

State: ``hidden``, ``attention_mask`` (the current stack's), and until the first decoder
block ``decoder_hidden`` ``[batch, tgt, d]`` + ``decoder_attention_mask`` ``[batch, tgt]``;
from the first decoder block on, ``encoder_hidden`` ``[batch, src, d]`` (after the encoder's
final norm) + ``encoder_attention_mask`` ``[batch, src]`` instead.

Position bias: only block 0 of each stack owns a ``relative_attention_bias`` table; every
block recomputes the bias from that table (a ``[buckets, heads]`` lookup) instead of carrying
a ``[1, heads, seq, seq]`` tensor in the state, so every state tensor keeps the batch as its
first dimension and a state can be split into micro-batches. The tables are
``shared_modules()``: a stage keeps them with its blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, T5ForConditionalGeneration

from pac.families import register
from pac.families.base import Block, ModelFamily, State
from pac.families.encoder_decoder import decoder_inputs, switch_to_decoder
from pac.families.loading import first, from_pretrained
from pac.families.masks import causal_mask, padding_mask


@register
class T5Family(ModelFamily):
    name = "t5"
    model_types = ("t5",)
    is_encoder_decoder = True
    supported_tasks = frozenset({"classification", "regression", "seq2seq"})
    lora_targets = ("q", "v")
    # Self-attention output projection and the feed-forward output projection: exact names
    # inside a T5Block. The FF sub-layer is layer.1 in encoder blocks and layer.2 in decoder
    # blocks (layer.1 is cross-attention there); each block has exactly one of the two.
    adapter_points = (
        "layer.0.SelfAttention.o",
        "layer.1.DenseReluDense.wo",
        "layer.2.DenseReluDense.wo",
    )

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        hf: Any = model
        self._encoder, self._decoder = hf.encoder, hf.decoder
        self._lm_head: nn.Linear = hf.lm_head
        self._shared: nn.Embedding = hf.shared
        self._num_encoder_blocks = len(hf.encoder.block)
        config = hf.config
        # v5 configs keep the "scale before the tied head" flag apart from tying.
        self._scale_logits = bool(
            getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)
        )

    @classmethod
    def load(cls, model_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
        return from_pretrained(T5ForConditionalGeneration, model_dir, dtype)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.num_heads)

    def blocks(self) -> list[Block]:
        n = self._num_encoder_blocks
        return [Block(i, "encoder", b) for i, b in enumerate(self._encoder.block)] + [
            Block(n + i, "decoder", b) for i, b in enumerate(self._decoder.block)
        ]

    def embed(self, batch: dict[str, torch.Tensor]) -> State:
        """Token embeddings of both stacks (T5 has no absolute positions). Without
        ``decoder_input_ids`` the decoder gets one ``decoder_start_token_id`` per sample."""
        dec_ids, dec_mask = decoder_inputs(batch, self.model.config.decoder_start_token_id)
        return {
            # Each stack's dropout (identity in eval) as in T5Stack.forward.
            "hidden": self._encoder.dropout(self._encoder.embed_tokens(batch["input_ids"])),
            "attention_mask": batch["attention_mask"],
            "decoder_hidden": self._decoder.dropout(self._decoder.embed_tokens(dec_ids)),
            "decoder_attention_mask": dec_mask,
        }

    def run_block(self, index: int, state: State) -> State:
        n = self._num_encoder_blocks
        if index < n:
            hidden = state["hidden"]
            bias = self._position_bias(self._encoder, hidden)
            mask = padding_mask(state["attention_mask"], hidden.dtype)
            out = self._encoder.block[index](hidden, attention_mask=mask, position_bias=bias)
            return {**state, "hidden": first(out)}
        if index == n:
            state = switch_to_decoder(state, self._finish_encoder)
        hidden = state["hidden"]
        out = self._decoder.block[index - n](
            hidden,
            attention_mask=causal_mask(state["attention_mask"], hidden.dtype),
            position_bias=self._position_bias(self._decoder, hidden),
            encoder_hidden_states=state["encoder_hidden"],
            encoder_attention_mask=padding_mask(state["encoder_attention_mask"], hidden.dtype),
        )
        return {**state, "hidden": first(out)}

    def _position_bias(self, stack: Any, hidden: torch.Tensor) -> torch.Tensor:
        # [1, heads, seq, seq], from the stack's block 0 table (bidirectional buckets in the
        # encoder, causal buckets in the decoder).
        seq = hidden.shape[1]
        owner = stack.block[0].layer[0].SelfAttention
        return owner.compute_bias(seq, seq, device=hidden.device).to(hidden.dtype)

    def _finish_encoder(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._encoder.dropout(self._encoder.final_layer_norm(hidden))

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._decoder.dropout(self._decoder.final_layer_norm(hidden))

    def lm_logits(self, final: torch.Tensor) -> torch.Tensor:
        # The head is tied to the input embedding: original T5 rescales by d_model**-0.5.
        if self._scale_logits:
            final = final * (self.hidden_size**-0.5)
        return self._lm_head(final)

    def shared_modules(self) -> list[nn.Module]:
        return [
            stack.block[0].layer[0].SelfAttention.relative_attention_bias
            for stack in (self._encoder, self._decoder)
        ]

    def head_modules(self) -> list[nn.Module]:
        return [self._decoder.final_layer_norm, self._lm_head, self._shared]
