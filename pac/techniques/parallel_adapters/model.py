"""Parallel Adapters: a frozen backbone and a small side network that reads its layers.

The side network (width d/r) starts from the down-projected embeddings; at each laddered
layer ``i`` a gate mixes the down-projected backbone state into it and a side block
processes it. An up-projection (zero at start) adds its output to the backbone's final
hidden state in front of the head, so training starts exactly at a linear probe of the
frozen backbone and the side network only adds to it. No gradient ever enters the
backbone: it runs in eval mode under ``torch.no_grad()``.

For encoder-decoder models the side decoder starts from the down-projected decoder
embeddings at the first decoder block and cross-attends to the side encoder's output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pac.families import ModelFamily
from pac.tasks import TaskSpec
from pac.techniques.backbone_dtype import dtype_name
from pac.techniques.base import TechniqueError, TunedModel
from pac.techniques.packed_backbone import pack_block_linears
from pac.techniques.parallel_adapters.config import ParallelAdaptersConfig
from pac.techniques.parallel_adapters.ladder import (
    EMBED,
    EMBED_DECODER,
    every_kth_block,
    ladder_points,
    layer_point,
    run_ladder,
)
from pac.techniques.parallel_adapters.layer import (
    LadderGate,
    SideBlock,
    attention_mask,
    widen_then_linear,
)

SideState = dict[str, torch.Tensor]


class SideNetwork(nn.Module):
    """The trainable side network; it can run any contiguous range of blocks, so a
    pipeline stage runs exactly the side blocks of its own layers."""

    def __init__(self, family: ModelFamily, config: ParallelAdaptersConfig) -> None:
        super().__init__()
        blocks = family.blocks()
        d_model = family.hidden_size
        self.width = width = max(1, d_model // config.reduction)
        heads = config.side_heads if width % config.side_heads == 0 else 1
        laddered = (
            every_kth_block(family, config.ladder_every)
            if config.laddered_layers is None
            else config.laddered_layers
        )
        bad = [i for i in laddered if not 0 <= i < len(blocks)]
        if bad:
            raise TechniqueError(
                f"laddered layers {bad} do not exist: the model has blocks 0..{len(blocks) - 1}"
            )
        self.laddered = sorted(laddered)
        self.causal = family.causal
        self.num_blocks = len(blocks)
        decoder_blocks = [b.index for b in blocks if b.stack == "decoder"]
        self.first_decoder_block = (
            decoder_blocks[0] if family.is_encoder_decoder and decoder_blocks else None
        )
        self.embed_down = nn.Linear(d_model, width)
        self.gates = nn.ModuleDict({str(i): LadderGate(d_model, width) for i in self.laddered})
        self.side_blocks = nn.ModuleDict(
            {
                str(i): SideBlock(
                    width,
                    heads,
                    config.mlp_ratio,
                    cross_attention=self.first_decoder_block is not None
                    and i >= self.first_decoder_block,
                    dropout=config.dropout,
                )
                for i in self.laddered
            }
        )
        self.decoder_embed_down: nn.Linear | None = None
        self.encoder_norm: nn.LayerNorm | None = None
        if self.first_decoder_block is not None:
            self.decoder_embed_down = nn.Linear(d_model, width)
            self.encoder_norm = nn.LayerNorm(width)
        self.final_norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, d_model)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def begin(self, ladder: dict[str, torch.Tensor]) -> SideState:
        """The side state before block 0: ``{"side": [batch, seq, w]}``."""
        return {"side": widen_then_linear(ladder[EMBED], self.embed_down)}

    def read(self, backbone_hidden: torch.Tensor) -> torch.Tensor:
        """A ladder point in the side network's own dtype: a bfloat16 backbone's (or a
        cache's) hidden states are read as float32, so the side network trains in float32."""
        return backbone_hidden.to(self.up.weight.dtype)

    def run(
        self,
        state: SideState,
        ladder: dict[str, torch.Tensor],
        batch: dict[str, torch.Tensor],
        begin: int,
        end: int,
        self_mask: torch.Tensor | None = None,
    ) -> SideState:
        """Run the side blocks of layers ``[begin, end)``; ``ladder`` must hold their
        points (and ``"embed.decoder"`` when the range starts the decoder). ``self_mask``:
        every block's self-attention mask (additive; packed rows' block-diagonal one,
        :mod:`pac.families.row_packing`) instead of ``batch``'s (encoder stacks only)."""
        if self_mask is not None and (self.causal or self.first_decoder_block is not None):
            raise ValueError("a given self-attention mask is for an encoder stack only")
        state = dict(state)
        masks: dict[tuple[str, int, bool], torch.Tensor] = {}

        def mask(key: str, query_len: int, causal: bool) -> torch.Tensor:
            """One mask per kind for all blocks (see layer.attention_mask)."""
            if (key, query_len, causal) not in masks:
                masks[key, query_len, causal] = attention_mask(
                    batch[key], query_len, causal, self.up.weight.dtype
                )
            return masks[key, query_len, causal]

        for index in range(begin, end):
            if index == self.first_decoder_block:
                assert self.encoder_norm is not None and self.decoder_embed_down is not None
                state["memory"] = self.encoder_norm(state["side"])
                state["side"] = widen_then_linear(ladder[EMBED_DECODER], self.decoder_embed_down)
            if str(index) not in self.gates:
                continue
            in_decoder = self.first_decoder_block is not None and index >= self.first_decoder_block
            mask_key = "decoder_attention_mask" if in_decoder else "attention_mask"
            x = self.gates[str(index)](ladder[layer_point(index)], state["side"])
            block_mask = (
                self_mask
                if self_mask is not None
                else mask(mask_key, x.shape[1], self.causal or in_decoder)
            )
            memory_mask = None
            if in_decoder:
                memory_mask = mask("attention_mask", x.shape[1], False)
            state["side"] = self.side_blocks[str(index)](
                x, block_mask, state.get("memory"), memory_mask
            )
        return state

    def finish(self, state: SideState) -> torch.Tensor:
        """The side network's contribution to the final hidden state ``[batch, seq, d]``."""
        return self.up(self.final_norm(state["side"]))


class ParallelAdaptersModel(TunedModel):
    """Frozen backbone + side network + task head (see the module docstring)."""

    technique = "parallel-adapters"
    uses_cache = True

    def __init__(
        self,
        family: ModelFamily,
        task: TaskSpec,
        config: ParallelAdaptersConfig | None = None,
    ) -> None:
        super().__init__(family, task)
        self.config = config or ParallelAdaptersConfig()
        family.model.eval()
        family.model.requires_grad_(False)
        if self.config.packed_backbone:
            pack_block_linears(family)
        self.side = SideNetwork(family, self.config)
        self.points = ladder_points(family, self.side.laddered)
        self.final_point = layer_point(self.side.num_blocks - 1)

    def ladder(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the frozen backbone: ``{point: [batch, seq, d_model]}``."""
        return run_ladder(self.family, batch, self.points)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_from_ladder(self.ladder(batch), batch)

    def forward_from_ladder(
        self, ladder: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The head's outputs from ladder points alone (live or read from the cache)."""
        state = self.side.run(self.side.begin(ladder), ladder, batch, 0, self.side.num_blocks)
        base = self.base_hidden(ladder[self.final_point])
        return self.head(base + self.side.finish(state), batch)

    @torch.no_grad()
    def base_hidden(self, last: torch.Tensor) -> torch.Tensor:
        """The frozen final norm on the last block's output ``[batch, seq, d_model]``, in
        the side network's dtype. The norm runs in the backbone's dtype: a point read from
        the cache (in the cache's own dtype) is first cast to it, as the live backbone would
        have it."""
        return self.side.read(self.family.final_hidden(last.to(self.backbone_dtype)))

    @property
    def cache_ladder(self) -> str:
        """The cache key's ladder description: the points, and the backbone's dtype when it
        is not float32 (a bfloat16 backbone's hidden states differ from a float32 one's, so
        they never share cache entries)."""
        points = ",".join(self.points)
        if self.backbone_dtype == torch.float32:
            return points
        return f"{points};dtype={dtype_name(self.backbone_dtype)}"

    def settings_dict(self) -> dict[str, Any]:
        return self.config.to_dict()
