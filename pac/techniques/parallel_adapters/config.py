"""Settings of the Parallel Adapters side network."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ParallelAdaptersConfig:
    """``reduction`` r: the side network's width is d_model / r (the paper's default 8).
    ``laddered_layers``: indices into the family's flattened blocks whose outputs feed the
    side network (``None`` = all). ``side_heads``: attention heads of a side block (one head
    when the width is not divisible). ``mlp_ratio``: the side MLP's hidden size / width.
    ``dropout``: on the side blocks' residual branches (0 by default: with it, a mesh can
    match single-device training only statistically, not step by step). ``ladder_every`` k
    (instead of ``laddered_layers``): ladder every k-th block of each stack, counted back
    from the stack's last block, as Ladder Side-Tuning drops layers of its side network;
    the side network then has that many fewer blocks to run and the cache that many fewer
    points to store. ``packed_backbone``: run the frozen blocks' linear layers on
    oneDNN-prepacked weights where the CPU build has them (pac.techniques.packed_backbone;
    forward only, which is all the backbone ever runs here). ``pack_rows``: a stage of
    every block runs its rows packed, the real tokens alone as one row, where the family
    can (pac.families.row_packing; the same results up to rounding)."""

    reduction: int = 8
    laddered_layers: tuple[int, ...] | None = None
    side_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    ladder_every: int = 1
    packed_backbone: bool = True
    pack_rows: bool = True

    def __post_init__(self) -> None:
        if self.reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {self.reduction}")
        if self.ladder_every < 1:
            raise ValueError(f"ladder_every must be >= 1, got {self.ladder_every}")
        if self.ladder_every > 1 and self.laddered_layers is not None:
            raise ValueError("give laddered_layers or ladder_every, not both")
        if self.laddered_layers is not None and len(set(self.laddered_layers)) != len(
            self.laddered_layers
        ):
            raise ValueError(f"laddered layers repeat: {self.laddered_layers}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.laddered_layers is not None:
            data["laddered_layers"] = list(self.laddered_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParallelAdaptersConfig:
        layers = data.get("laddered_layers")
        return cls(
            reduction=int(data.get("reduction", 8)),
            laddered_layers=None if layers is None else tuple(int(i) for i in layers),
            side_heads=int(data.get("side_heads", 4)),
            mlp_ratio=int(data.get("mlp_ratio", 4)),
            dropout=float(data.get("dropout", 0.0)),
            ladder_every=int(data.get("ladder_every", 1)),
            packed_backbone=bool(data.get("packed_backbone", True)),
            pack_rows=bool(data.get("pack_rows", True)),
        )
