"""GPT-2 (``GPT2LMHeadModel``): token + learned position embeddings, pre-LN causal blocks,
``ln_f``, an LM head tied to ``wte``.

State: ``hidden`` ``[batch, seq, d]`` and ``attention_mask`` ``[batch, seq]`` (right padding;
each block builds causal + padding masks). Sequence-level heads pool the last real token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GPT2LMHeadModel, PreTrainedModel

from pac.families import register
from pac.families.base import Block, ModelFamily, State
from pac.families.loading import first, from_pretrained
from pac.families.masks import causal_mask


@register
class Gpt2Family(ModelFamily):
    name = "gpt2"
    model_types = ("gpt2",)
    causal = True
    supported_tasks = frozenset({"classification", "regression", "causal-lm"})
    # The fused query/key/value projection (a Conv1D: peft sets fan_in_fan_out).
    lora_targets = ("c_attn",)
    adapter_points = ("attn.c_proj", "mlp.c_proj")

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        hf: Any = model
        self._transformer = hf.transformer
        self._lm_head: nn.Linear = hf.lm_head

    @classmethod
    def load(cls, model_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
        return from_pretrained(GPT2LMHeadModel, model_dir, dtype)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.n_embd)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.n_head)

    def blocks(self) -> list[Block]:
        return [Block(i, "decoder", b) for i, b in enumerate(self._transformer.h)]

    def embed(self, batch: dict[str, torch.Tensor]) -> State:
        """``wte(ids) + wpe(0..seq-1)``: ``[batch, seq, d]``."""
        ids = batch["input_ids"]
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        hidden = self._transformer.drop(
            self._transformer.wte(ids) + self._transformer.wpe(positions)
        )
        return {"hidden": hidden, "attention_mask": batch["attention_mask"]}

    def run_block(self, index: int, state: State) -> State:
        hidden = state["hidden"]
        mask = causal_mask(state["attention_mask"], hidden.dtype)
        out = self._transformer.h[index](hidden, attention_mask=mask)
        return {**state, "hidden": first(out)}

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._transformer.ln_f(hidden)

    def lm_logits(self, final: torch.Tensor) -> torch.Tensor:
        return self._lm_head(final)

    def head_modules(self) -> list[nn.Module]:
        # lm_head.weight is wte.weight: keep both.
        return [self._transformer.ln_f, self._lm_head, self._transformer.wte]
