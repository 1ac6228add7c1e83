"""What the engine needs to know about a model family, and nothing more.

A family flattens a Hugging Face model into an embedding step, a list of blocks and a
head. Everything above it (stages, the side network, the cache, the techniques) is
family-agnostic and speaks only this interface.

State
    A ``dict[str, Tensor]`` that flows from block to block. It always holds
    ``"hidden"`` ``[batch, seq, d_model]`` (the current stack's hidden state) and
    ``"attention_mask"`` ``[batch, seq]`` (1 = real token). A family may add what its
    blocks need (position ids, a T5 position bias, the encoder output and its mask for
    decoder blocks, the decoder's embedded input for encoder-decoder models). Because it
    is a flat dict of tensors, a state can be sent to another device as is.

Blocks
    The flattened list: encoder blocks first, then decoder blocks. ``run_block(i, state)``
    runs block ``i``; for an encoder-decoder model the first decoder block also finishes the
    encoder (final norm -> ``"encoder_hidden"``) and switches ``"hidden"`` to the decoder.
    After ``run_block(i)``, ``state["hidden"]`` is exactly the hidden state the side network
    reads for layer ``i`` (the "ladder" point).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedModel

State = dict[str, torch.Tensor]
Stack = Literal["encoder", "decoder"]

# Task kinds the engine knows. A family declares which of them it supports.
TaskKind = Literal["classification", "regression", "seq2seq", "causal-lm"]


@dataclass(frozen=True)
class Block:
    """One backbone block in the flattened list."""

    index: int
    stack: Stack
    module: nn.Module


class FamilyError(ValueError):
    """A model directory or a request does not fit the family."""


class ModelFamily(ABC):
    """Adapter from one Hugging Face architecture to the engine's flat view.

    Subclasses are small: each knows how its architecture embeds, which blocks it has,
    what they need besides the hidden state, and where its head is.
    """

    name: ClassVar[str]
    # `config.model_type` values this family accepts (e.g. ("llama", "qwen2")).
    model_types: ClassVar[tuple[str, ...]]
    is_encoder_decoder: ClassVar[bool] = False
    # Decoder-only families pool the last real token; encoders pool the mean.
    causal: ClassVar[bool] = False
    supported_tasks: ClassVar[frozenset[str]]
    # Module-name suffixes that LoRA targets (peft `target_modules`).
    lora_targets: ClassVar[tuple[str, ...]]
    # Module names, relative to a block (``block.module.named_modules()``), whose output
    # gets a Houlsby bottleneck adapter: the attention output projection and the MLP
    # output projection. `adapter_modules` matches them exactly. They are also chosen so
    # that the suffix rule over the whole model (a module whose qualified name ends with
    # "." + any point, each module once) selects the same 2 modules per block; in BERT
    # "output.dense" also ends "attention.output.dense", which is a point anyway.
    adapter_points: ClassVar[tuple[str, ...]]
    # Whether ``run_block`` also runs a packed state (:mod:`pac.families.row_packing`: the rows'
    # real tokens as one row, ``"segments"`` instead of ``"attention_mask"``).
    packs_rows: ClassVar[bool] = False

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    # ---- loading -------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, model_dir: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
        """Load the backbone with its LM head (if it has one) from a local directory,
        through ``from_pretrained``, in eval mode."""

    # ---- shape -----------------------------------------------------------------------
    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """d_model of the blocks' hidden states."""

    @property
    @abstractmethod
    def num_heads(self) -> int:
        """Attention heads of the backbone blocks."""

    @abstractmethod
    def blocks(self) -> list[Block]:
        """The flattened blocks, encoder first."""

    # ---- compute ---------------------------------------------------------------------
    @abstractmethod
    def embed(self, batch: dict[str, torch.Tensor]) -> State:
        """``batch`` holds ``input_ids`` and ``attention_mask`` ``[batch, seq]`` and, for
        encoder-decoder models, ``decoder_input_ids`` and ``decoder_attention_mask``
        ``[batch, tgt_seq]``. Returns the state before block 0; for encoder-decoder
        models it also holds ``"decoder_hidden"`` (the embedded decoder input) and
        ``"decoder_attention_mask"``."""

    @abstractmethod
    def run_block(self, index: int, state: State) -> State:
        """Run block ``index`` on ``state`` and return the new state (a new dict)."""

    @abstractmethod
    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last stack's final norm applied to the last block's output
        ``[batch, seq, d_model]`` (identity where the architecture has none)."""

    def lm_logits(self, final: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``[batch, seq, vocab]`` from ``final_hidden`` output."""
        raise FamilyError(f"model family {self.name!r} has no language-model head")

    def adapter_modules(self, block: Block) -> list[nn.Module]:
        """The modules of ``block`` named exactly by one of ``adapter_points`` (names relative
        to the block): its attention output projection and MLP output projection, 2 per block."""
        points = set(self.adapter_points)
        return [module for name, module in block.module.named_modules() if name in points]

    def shared_modules(self) -> list[nn.Module]:
        """Modules outside the blocks that ``run_block`` still uses (T5's relative position
        bias tables, Llama's rotary embedding). A stage keeps them with its blocks."""
        return []

    def head_modules(self) -> list[nn.Module]:
        """Modules that the head needs after the backbone is released (final norm, LM
        head and whatever it is tied to). Everything else may be freed."""
        return []

    # ---- whole forward, for checking and for the baselines ----------------------------
    def forward_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """embed -> every block -> final norm: ``[batch, seq, d_model]`` of the last stack."""
        state = self.embed(batch)
        for block in self.blocks():
            state = self.run_block(block.index, state)
        return self.final_hidden(state["hidden"])
