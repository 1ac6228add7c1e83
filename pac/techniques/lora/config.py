"""Settings of the LoRA baseline."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LoraSettings:
    """Rank ``r`` and scale ``alpha`` of LoRA on the family's attention projections
    (``lora_targets``, typically query and value), as in the paper's baseline."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        return cls(
            r=int(data.get("r", 8)),
            alpha=int(data.get("alpha", 16)),
            dropout=float(data.get("dropout", 0.0)),
        )
