"""How tensors move between devices: a tiny interface, and its in-process form."""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

Tensors = dict[str, torch.Tensor]
MessageKind = Literal["batch", "act", "grad", "allreduce", "cache"]


@dataclass(frozen=True)
class MessageKey:
    """Names one message of a step: what it holds, for which micro-batch, from whom to whom."""

    step: int
    kind: MessageKind
    micro_batch: int
    source: str
    target: str

    def __str__(self) -> str:
        return f"{self.step}/{self.kind}/{self.micro_batch}/{self.source}>{self.target}"


class Transport(Protocol):
    """``send`` delivers a named dict of tensors to ``key.target``; ``recv`` blocks until
    the message ``key`` addressed to this device arrives."""

    def send(self, key: MessageKey, tensors: Tensors) -> None: ...

    def recv(self, key: MessageKey, timeout: float | None = None) -> Tensors: ...


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

    def send(self, key: MessageKey, tensors: Tensors) -> None:
        # A copy, as a real wire would make: the receiver must not share the sender's memory.
        copied = {name: t.detach().clone() for name, t in tensors.items()}
        self.hub.bytes_sent[(self.device, key.target)] += sum(
            t.numel() * t.element_size() for t in copied.values()
        )
        self.hub.box(key.target, str(key)).put(copied)

    def recv(self, key: MessageKey, timeout: float | None = 60.0) -> Tensors:
        try:
            return self.hub.box(self.device, str(key)).get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.device}: no message {key!r} within {timeout} s") from None
