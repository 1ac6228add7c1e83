"""How the wire reports what it moved, without knowing who counts it.

The agent implements ``TransferObserver`` with Prometheus metrics; tests and the
coordinator may pass ``NullObserver``.
"""

from __future__ import annotations

from typing import Protocol


class TransferObserver(Protocol):
    def received(self, peer: str, nbytes: int, tensors: int, seconds: float) -> None:
        """A message from ``peer`` was received and verified."""

    def sent(self, peer: str, nbytes: int, tensors: int, seconds: float) -> None:
        """A message was sent to ``peer`` and acknowledged."""


class NullObserver:
    def received(self, peer: str, nbytes: int, tensors: int, seconds: float) -> None:
        pass

    def sent(self, peer: str, nbytes: int, tensors: int, seconds: float) -> None:
        pass
