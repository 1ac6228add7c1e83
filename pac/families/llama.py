"""Llama-architecture decoders (``LlamaForCausalLM``, ``Qwen2ForCausalLM``): token
embeddings, pre-RMSNorm causal blocks with rotary positions, a final RMSNorm, an LM head
(tied to the embeddings when ``tie_word_embeddings``).

State: ``hidden`` ``[batch, seq, d]``, ``attention_mask`` ``[batch, seq]`` and
``position_ids`` ``[batch, seq]`` (int64). Each block recomputes its rotary cos/sin from
``position_ids`` with the model's ``rotary_emb`` (a ``shared_modules()`` entry, no weights)
and builds causal + padding (+ sliding window, Qwen2) masks. Heads pool the last real token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from pac.families import register
from pac.families.base import Block, ModelFamily, State
from pac.families.loading import first, from_pretrained
from pac.families.masks import causal_mask


@register
class LlamaFamily(ModelFamily):
    name = "llama"
    model_types = ("llama", "qwen2")
    causal = True
    supported_tasks = frozenset({"classification", "regression", "causal-lm"})
    lora_targets = ("q_proj", "v_proj")
    adapter_points = ("self_attn.o_proj", "mlp.down_proj")

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        hf: Any = model
        self._base = hf.model
        self._lm_head: nn.Linear = hf.lm_head
        config = hf.config
        layer_types = getattr(config, "layer_types", None) or []
        window = getattr(config, "sliding_window", None)
        # Per block: None (full attention) or the sliding window length (Qwen2 option).
        self._windows: list[int | None] = [
            window if i < len(layer_types) and layer_types[i] == "sliding_attention" else None
            for i in range(len(self._base.layers))
        ]

    @classmethod
    def load(cls, model_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
        return from_pretrained(AutoModelForCausalLM, model_dir, dtype)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    def blocks(self) -> list[Block]:
        return [Block(i, "decoder", b) for i, b in enumerate(self._base.layers)]

    def embed(self, batch: dict[str, torch.Tensor]) -> State:
        """Token embeddings ``[batch, seq, d]`` and positions 0..seq-1 (right padding)."""
        ids = batch["input_ids"]
        positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        return {
            "hidden": self._base.embed_tokens(ids),
            "attention_mask": batch["attention_mask"],
            "position_ids": positions.contiguous(),
        }

    def run_block(self, index: int, state: State) -> State:
        hidden, positions = state["hidden"], state["position_ids"]
        rotary = self._base.rotary_emb(hidden, positions)
        mask = causal_mask(state["attention_mask"], hidden.dtype, self._windows[index])
        out = self._base.layers[index](
            hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary
        )
        return {**state, "hidden": first(out)}

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._base.norm(hidden)

    def lm_logits(self, final: torch.Tensor) -> torch.Tensor:
        return self._lm_head(final)

    def shared_modules(self) -> list[nn.Module]:
        return [self._base.rotary_emb]

    def head_modules(self) -> list[nn.Module]:
        heads = [self._base.norm, self._lm_head]
        if self.model.config.tie_word_embeddings:
            heads.append(self._base.embed_tokens)
        return heads
