"""Explicit limits of the wire, and the ledger of bytes in flight per peer.

Every receive buffer is allocated up front at the size the header declares, so the limits
are checked against that declaration before a byte is allocated: a peer cannot make an
agent allocate more than ``max_in_flight_bytes_per_peer`` however many streams it opens.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from pac.wire.errors import LimitExceeded

MiB = 1 << 20
GiB = 1 << 30

# gRPC refuses messages over 4 MiB by default; chunks stay below that with room for framing.
MAX_CHUNK_BYTES = 4 * MiB
DEFAULT_CHUNK_BYTES = 1 * MiB
# What a gRPC channel or server accepts per message: the largest chunk plus framing.
MAX_GRPC_MESSAGE_BYTES = MAX_CHUNK_BYTES + 64 * 1024


@dataclass(frozen=True)
class WireLimits:
    """Sizes a receiver accepts. Defaults fit a 1 GiB tensor with room to spare."""

    max_message_bytes: int = 2 * GiB
    max_in_flight_bytes_per_peer: int = 3 * GiB
    max_chunk_bytes: int = MAX_CHUNK_BYTES


@dataclass
class InFlightLedger:
    """Bytes of receive buffers currently allocated, per peer."""

    limits: WireLimits
    _bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def reserve(self, peer: str, nbytes: int) -> None:
        """Account ``nbytes`` to ``peer`` or raise ``LimitExceeded`` (nothing reserved)."""
        if nbytes > self.limits.max_message_bytes:
            raise LimitExceeded(
                f"message of {nbytes} bytes from {peer!r} exceeds the limit of "
                f"{self.limits.max_message_bytes} bytes; split it or raise --max-message-mib"
            )
        if self._bytes[peer] + nbytes > self.limits.max_in_flight_bytes_per_peer:
            raise LimitExceeded(
                f"{peer!r} already has {self._bytes[peer]} bytes in flight; {nbytes} more "
                f"would exceed {self.limits.max_in_flight_bytes_per_peer}: retry when earlier "
                "messages are done"
            )
        self._bytes[peer] += nbytes

    def release(self, peer: str, nbytes: int) -> None:
        self._bytes[peer] -= nbytes
        if self._bytes[peer] <= 0:
            del self._bytes[peer]

    def in_flight(self, peer: str) -> int:
        return self._bytes.get(peer, 0)
