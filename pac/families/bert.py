"""BERT-like encoders (BERT, MiniLM, RoBERTa): embeddings, then a stack of post-LN blocks.

State: ``hidden`` ``[batch, seq, d]`` and ``attention_mask`` ``[batch, seq]`` (or, packed,
``hidden`` ``[1, tokens, d]`` and ``segments``: pac.families.row_packing). There is no
final norm (each block ends with its own LayerNorm) and no LM head: classification and
regression heads belong to the technique, pooled over the real tokens (mean).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel

from pac.families import register
from pac.families.base import Block, ModelFamily, State
from pac.families.loading import first, from_pretrained
from pac.families.masks import padding_mask
from pac.families.row_packing import SEGMENTS, segment_mask


@register
class BertFamily(ModelFamily):
    """``BertModel`` (or ``RobertaModel``: same blocks, its own position ids in embed)."""

    name = "bert"
    model_types = ("bert", "roberta")
    supported_tasks = frozenset({"classification", "regression"})
    lora_targets = ("query", "value")
    # BertSelfOutput.dense and BertOutput.dense, exact names inside a BertLayer.
    adapter_points = ("attention.output.dense", "output.dense")
    packs_rows = True  # positions are added in embed: a block sees no position

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        hf: Any = model
        self._embeddings: nn.Module = hf.embeddings
        self._layers: nn.ModuleList = hf.encoder.layer

    @classmethod
    def load(cls, model_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
        return from_pretrained(AutoModel, model_dir, dtype)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    def blocks(self) -> list[Block]:
        return [Block(i, "encoder", layer) for i, layer in enumerate(self._layers)]

    def embed(self, batch: dict[str, torch.Tensor]) -> State:
        """Word + position (+ token type) embeddings and LayerNorm: ``[batch, seq, d]``.
        ``token_type_ids`` (text pairs) is optional."""
        hidden = self._embeddings(
            input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids")
        )
        return {"hidden": hidden, "attention_mask": batch["attention_mask"]}

    def run_block(self, index: int, state: State) -> State:
        hidden = state["hidden"]
        if SEGMENTS in state:
            mask = segment_mask(state[SEGMENTS], hidden.dtype)
        else:
            mask = padding_mask(state["attention_mask"], hidden.dtype)
        return {**state, "hidden": first(self._layers[index](hidden, attention_mask=mask))}

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden
