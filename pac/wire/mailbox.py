"""Where received tensor messages wait for the compute code that needs them.

A message is filed under its routing key (job, step, micro-batch, stage, kind). Compute
code awaits a key; whichever comes first (the message or the wait) the other finds it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch

from pac.wire.errors import DuplicateMessage, UnknownJob
from protos.v1 import tensors_pb2


@dataclass(frozen=True)
class RoutingKey:
    job_id: str
    step: int
    micro_batch: int
    stage: int
    kind: int  # a tensors_pb2.TensorKind value

    @classmethod
    def of(cls, routing: tensors_pb2.Routing) -> RoutingKey:
        return cls(routing.job_id, routing.step, routing.micro_batch, routing.stage, routing.kind)

    def __str__(self) -> str:
        kind = tensors_pb2.TensorKind.Name(self.kind)  # type: ignore[arg-type]
        return (
            f"job {self.job_id!r} step {self.step} micro-batch {self.micro_batch} "
            f"stage {self.stage} {kind}"
        )


@dataclass(frozen=True)
class TensorMessage:
    """A received, verified, decoded message. ``tensors`` are views of one buffer of
    ``nbytes`` bytes."""

    routing: tensors_pb2.Routing
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    nbytes: int


class Mailbox:
    """Received messages by routing key. Use from the event loop only."""

    def __init__(self) -> None:
        self._slots: dict[RoutingKey, asyncio.Future[TensorMessage]] = {}
        # Jobs dropped and not opened again: a wait for one fails at once.
        self._dropped: set[str] = set()

    def _slot(self, key: RoutingKey) -> asyncio.Future[TensorMessage]:
        slot = self._slots.get(key)
        if slot is None:
            slot = asyncio.get_running_loop().create_future()
            self._slots[key] = slot
        return slot

    def put(self, message: TensorMessage) -> None:
        """File ``message``; DuplicateMessage if one is already waiting under its key."""
        key = RoutingKey.of(message.routing)
        slot = self._slot(key)
        if slot.done():
            raise DuplicateMessage(f"a message for {key} is already waiting to be taken")
        slot.set_result(message)

    async def get(self, key: RoutingKey, timeout: float | None = None) -> TensorMessage:
        """The message filed under ``key`` (waiting for it up to ``timeout`` seconds; then
        TimeoutError). Taking it removes it. A job dropped meanwhile ends the wait
        (UnknownJob), and so does asking for one already dropped: nothing will come."""
        if key.job_id in self._dropped:
            raise UnknownJob(f"{key}: the job was closed here; no message will come")
        slot = self._slot(key)
        try:
            return await asyncio.wait_for(asyncio.shield(slot), timeout)
        finally:
            if slot.done() and not slot.cancelled():
                self._slots.pop(key, None)

    def pending(self) -> list[RoutingKey]:
        """Keys of messages that arrived and were not taken yet."""
        return [key for key, slot in self._slots.items() if slot.done()]

    def reopen(self, job_id: str) -> None:
        """Accept waits for a job dropped before (opened again under the same id)."""
        self._dropped.discard(job_id)

    def drop_job(self, job_id: str) -> int:
        """Forget every message and wait of a job (a wait in progress or to come fails);
        returns how many messages were dropped."""
        self._dropped.add(job_id)
        keys = [key for key in self._slots if key.job_id == job_id]
        dropped = 0
        for key in keys:
            slot = self._slots.pop(key)
            if slot.done():
                dropped += 1
            else:
                slot.cancel()
        return dropped

    def bytes_waiting(self) -> int:
        return sum(
            slot.result().nbytes
            for slot in self._slots.values()
            if slot.done() and not slot.cancelled()
        )
