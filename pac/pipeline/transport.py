"""How tensors move between devices: a tiny interface, and its in-process form."""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from typing import Protocol

import torch

Tensors = dict[str, torch.Tensor]


class Transport(Protocol):
    """``send`` delivers a named dict of tensors to ``peer``; ``recv`` blocks until the
    message ``key`` addressed to this device arrives."""

    def send(self, peer: str, key: str, tensors: Tensors) -> None: ...

    def recv(self, key: str, timeout: float | None = None) -> Tensors: ...


class InProcessHub:
    """Queues between devices that live in one process (threads): the test bed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boxes: dict[tuple[str, str], queue.Queue[Tensors]] = defaultdict(queue.Queue)
        self.bytes_sent: dict[tuple[str, str], int] = defaultdict(int)

    def box(self, device: str, key: str) -> queue.Queue[Tensors]:
        with self._lock:
            return self._boxes[(device, key)]

    def transport(self, device: str) -> InProcessTransport:
        return InProcessTransport(self, device)


class InProcessTransport:
    def __init__(self, hub: InProcessHub, device: str) -> None:
        self.hub = hub
        self.device = device

    def send(self, peer: str, key: str, tensors: Tensors) -> None:
        # A copy, as a real wire would make: the receiver must not share the sender's memory.
        copied = {name: t.detach().clone() for name, t in tensors.items()}
        self.hub.bytes_sent[(self.device, peer)] += sum(
            t.numel() * t.element_size() for t in copied.values()
        )
        self.hub.box(peer, key).put(copied)

    def recv(self, key: str, timeout: float | None = 60.0) -> Tensors:
        try:
            return self.hub.box(self.device, key).get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.device}: no message {key!r} within {timeout} s") from None
