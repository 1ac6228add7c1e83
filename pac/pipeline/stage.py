"""What one pipeline stage computes for one micro-batch, per kind of technique.

A stage receives named tensors from the previous stage (``"bb.*"``: the backbone state;
``"side.*"``: the side network's state), runs its blocks, and returns what the next stage
needs; the last stage returns the loss terms instead. Inputs that carry a gradient become
leaves that require grad, so that after ``backward`` their ``.grad`` is what travels back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from pac.families import State, row_packing
from pac.families.row_packing import pack_rows, packed_groups, segment_mask, unpack_rows
from pac.techniques.base import TunedModel
from pac.techniques.parallel_adapters import ParallelAdaptersModel
from pac.techniques.parallel_adapters.ladder import (
    EMBED_DECODER,
    embed_points,
    layer_point,
    run_backbone_packed,
    run_backbone_range,
)

Tensors = dict[str, torch.Tensor]
BACKBONE, SIDE = "bb.", "side."


@dataclass
class StageOutput:
    """``outputs``: tensors for the next stage (or, on the last stage, empty); ``loss`` and
    ``count``: the summed loss terms on the last stage; ``points``: ladder points this stage
    computed (to be cached)."""

    outputs: Tensors = field(default_factory=dict)
    loss: torch.Tensor | None = None
    count: int = 0
    points: Tensors = field(default_factory=dict)


class StageComputation(ABC):
    def __init__(self, model: TunedModel, begin: int, end: int, num_blocks: int) -> None:
        self.model = model
        self.begin = begin
        self.end = end
        self.is_first = begin == 0
        self.is_last = end == num_blocks

    @abstractmethod
    def carries_grad(self, key: str) -> bool:
        """Whether an input tensor named ``key`` gets a gradient to send back."""

    @abstractmethod
    def forward(self, inputs: Tensors, batch: Tensors) -> StageOutput:
        """Run the stage on one micro-batch (``batch``: its rows of the mini-batch)."""


def _split(inputs: Tensors, prefix: str) -> Tensors:
    return {k[len(prefix) :]: v for k, v in inputs.items() if k.startswith(prefix)}


def _join(prefix: str, tensors: Tensors) -> Tensors:
    return {prefix + k: v for k, v in tensors.items()}


class SideStage(StageComputation):
    """Parallel Adapters: the backbone runs frozen; only the side state carries a gradient.

    A stage of every block (one stage) whose family packs rows runs on its rows packed
    (:mod:`pac.families.row_packing`): one call per block for all of them, backbone and
    side network, no padding computed; the setting ``pack_rows: false`` runs them padded."""

    model: ParallelAdaptersModel

    def __init__(self, model: ParallelAdaptersModel, begin: int, end: int, num_blocks: int) -> None:
        super().__init__(model, begin, end, num_blocks)
        self.packs = (
            model.config.pack_rows and self.is_first and self.is_last and model.family.packs_rows
        )

    def carries_grad(self, key: str) -> bool:
        return key.startswith(SIDE)

    def forward(self, inputs: Tensors, batch: Tensors) -> StageOutput:
        if self.packs:
            return self._forward_packed(batch)
        model, family = self.model, self.model.family
        points: Tensors = {}
        if self.is_first:
            with torch.no_grad():
                state: State = family.embed(batch)
            points = embed_points(family, state)
            side = model.side.begin(points)
        else:
            state, side = _split(inputs, BACKBONE), _split(inputs, SIDE)
        ladder = dict(points)
        if "decoder_hidden" in state:  # the stage that starts the decoder needs its input
            ladder[EMBED_DECODER] = state["decoder_hidden"]
        state, layers = run_backbone_range(family, state, self.begin, self.end, model.points)
        ladder.update(layers)
        points.update(layers)
        side = model.side.run(side, ladder, batch, self.begin, self.end)
        if not self.is_last:
            return StageOutput(_join(BACKBONE, state) | _join(SIDE, side), points=points)
        base = model.base_hidden(ladder[layer_point(self.end - 1)])  # no grad, side's dtype
        outputs = model.head(base + model.side.finish(side), batch)
        loss, count = model.loss_terms(outputs, batch)
        return StageOutput(loss=loss, count=count, points=points)

    def _forward_packed(self, batch: Tensors) -> StageOutput:
        """Every block on the rows packed: the backbone's blocks and the side network's
        run on the real tokens of a group of rows as one row (each token attending to its
        own row's; groups of at most ``PACK_TOKENS``); the points (for the cache) and the
        side network's output (for the head) come back unpacked, ``[rows, seq, d]``."""
        model, family = self.model, self.model.family
        with torch.no_grad():
            state = family.embed(batch)
        mask = state["attention_mask"]
        points = embed_points(family, state)
        layers: dict[str, list[torch.Tensor]] = {}
        finals = []
        for start, stop in packed_groups(mask, row_packing.PACK_TOKENS):
            rows = {key: value[start:stop] for key, value in state.items()}
            ladder, segments = run_backbone_packed(family, rows, 0, self.end, model.points)
            own = mask[start:stop]
            for name, point in points.items():
                ladder[name] = pack_rows(point[start:stop], own)["hidden"]
            side_mask = segment_mask(segments, model.side.up.weight.dtype)
            side = model.side.run(model.side.begin(ladder), ladder, batch, 0, self.end, side_mask)
            for name, point in ladder.items():
                if name not in points:
                    layers.setdefault(name, []).append(unpack_rows(point, own))
            finals.append(unpack_rows(model.side.finish(side), own))
        points.update({name: torch.cat(parts) for name, parts in layers.items()})
        base = model.base_hidden(points[layer_point(self.end - 1)])
        outputs = model.head(base + torch.cat(finals), batch)
        loss, count = model.loss_terms(outputs, batch)
        return StageOutput(loss=loss, count=count, points=points)


class BackboneStage(StageComputation):
    """Baselines (full, LoRA, adapters): the backbone's hidden states carry the gradient
    backwards, stage to stage (Eco-FL-like pipeline training)."""

    GRAD_KEYS = ("hidden", "encoder_hidden", "decoder_hidden")

    def carries_grad(self, key: str) -> bool:
        return key.startswith(BACKBONE) and key[len(BACKBONE) :] in self.GRAD_KEYS

    def forward(self, inputs: Tensors, batch: Tensors) -> StageOutput:
        family = self.model.family
        state = family.embed(batch) if self.is_first else _split(inputs, BACKBONE)
        for index in range(self.begin, self.end):
            state = family.run_block(index, state)
        if not self.is_last:
            return StageOutput(_join(BACKBONE, state))
        outputs = self.model.head(family.final_hidden(state["hidden"]), batch)
        loss, count = self.model.loss_terms(outputs, batch)
        return StageOutput(loss=loss, count=count)


def stage_computation(model: TunedModel, begin: int, end: int) -> StageComputation:
    num_blocks = len(model.family.blocks())
    if isinstance(model, ParallelAdaptersModel):
        return SideStage(model, begin, end, num_blocks)
    return BackboneStage(model, begin, end, num_blocks)
