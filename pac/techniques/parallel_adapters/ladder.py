"""The ladder: which backbone hidden states the side network reads, and running the frozen
backbone to produce them.

Point names: ``"embed"`` (the first stack's embedded input), ``"embed.decoder"`` (the
decoder's embedded input, encoder-decoder models only) and ``"layer.{i}"`` (the output of
flattened block ``i``). These are exactly the tensors the activation cache stores per
sample, unpadded, and what a pipeline stage hands to its side blocks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pac.families import ModelFamily, State
from pac.families.row_packing import SEGMENTS, pack_rows

EMBED = "embed"
EMBED_DECODER = "embed.decoder"


def layer_point(index: int) -> str:
    return f"layer.{index}"


def every_kth_block(family: ModelFamily, k: int) -> list[int]:
    """Every ``k``-th block of each stack, counted back from the stack's last block
    (``k = 2`` on six encoder blocks: 1, 3, 5); ``k = 1`` is every block."""
    stacks: dict[str, list[int]] = {}
    for block in family.blocks():
        stacks.setdefault(block.stack, []).append(block.index)
    return sorted(
        index
        for indices in stacks.values()
        for position, index in enumerate(indices)
        if (len(indices) - 1 - position) % k == 0
    )


def ladder_points(family: ModelFamily, laddered: Iterable[int]) -> list[str]:
    """Every point the side network and the head read: the embeddings, the laddered
    layers, and the last block (the head's input), in block order."""
    last = len(family.blocks()) - 1
    points = [EMBED] + ([EMBED_DECODER] if family.is_encoder_decoder else [])
    return points + [layer_point(i) for i in sorted(set(laddered) | {last})]


def point_mask_key(family: ModelFamily, point: str) -> str:
    """The batch key of the 0/1 mask ``[batch, seq]`` that a point's sequence follows."""
    if not family.is_encoder_decoder:
        return "attention_mask"
    if point == EMBED_DECODER:
        return "decoder_attention_mask"
    if point.startswith("layer."):
        stack = family.blocks()[int(point.split(".", 1)[1])].stack
        return "decoder_attention_mask" if stack == "decoder" else "attention_mask"
    return "attention_mask"


@torch.no_grad()
def run_backbone_range(
    family: ModelFamily, state: State, begin: int, end: int, points: Iterable[str]
) -> tuple[State, dict[str, torch.Tensor]]:
    """Run blocks ``[begin, end)`` on ``state`` (no gradient) and collect the wanted
    ``"layer.{i}"`` points among them. Returns the new state and the points."""
    wanted = set(points)
    collected: dict[str, torch.Tensor] = {}
    for index in range(begin, end):
        state = family.run_block(index, state)
        if layer_point(index) in wanted:
            collected[layer_point(index)] = state["hidden"]
    return state, collected


@torch.no_grad()
def run_backbone_packed(
    family: ModelFamily, state: State, begin: int, end: int, points: Iterable[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`run_backbone_range` on ``state``'s rows packed (:mod:`pac.families.row_packing`;
    the family must pack rows): the wanted points ``[1, tokens, d]``, and the packed
    tokens' rows (``segments`` ``[1, tokens]``)."""
    if not family.packs_rows:
        raise ValueError(f"the {family.name} family does not run packed rows")
    packed = pack_rows(state["hidden"], state["attention_mask"])
    _, layers = run_backbone_range(family, packed, begin, end, points)
    return layers, packed[SEGMENTS]


@torch.no_grad()
def embed_points(family: ModelFamily, state: State) -> dict[str, torch.Tensor]:
    """The embedding points of a freshly embedded state."""
    points = {EMBED: state["hidden"]}
    if family.is_encoder_decoder:
        points[EMBED_DECODER] = state["decoder_hidden"]
    return points


@torch.no_grad()
def run_ladder(
    family: ModelFamily, batch: dict[str, torch.Tensor], points: Iterable[str]
) -> dict[str, torch.Tensor]:
    """The whole backbone, frozen: ``{point: [batch, seq, d_model]}`` for ``points``."""
    state = family.embed(batch)
    ladder = embed_points(family, state)
    _, layers = run_backbone_range(family, state, 0, len(family.blocks()), points)
    ladder.update(layers)
    return {name: ladder[name] for name in points}
