"""Settings of the bottleneck (Houlsby) adapters baseline."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AdapterSettings:
    """``bottleneck``: the adapters' inner size (``None``: d_model / 16, at least 8)."""

    bottleneck: int | None = None

    def size_for(self, d_model: int) -> int:
        return self.bottleneck if self.bottleneck is not None else max(8, d_model // 16)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterSettings:
        size = data.get("bottleneck")
        return cls(bottleneck=None if size is None else int(size))
