"""An agent's part of a mesh training job: its model replica, its stage's worker, its
cache, and the transport that carries the worker's tensors over the gRPC wire.

The worker runs in a thread (compute stays off the event loop); its sends and receives
hop onto the agent's event loop, where the gRPC client and the mailbox live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import torch

from pac.cache.key import CacheKey
from pac.cache.store import ActivationCache
from pac.engine.ladder_cache import LadderCache
from pac.engine.loading import load_model
from pac.engine.schedule import make_optimizer
from pac.pipeline.job import MeshJobSettings
from pac.pipeline.transport import MessageKey, Tensors
from pac.pipeline.worker import DeviceWorker, StepResult
from pac.techniques import build_technique
from pac.techniques.parallel_adapters import ParallelAdaptersModel
from pac.wire.mailbox import Mailbox, RoutingKey
from protos.v1 import tensors_pb2

# send(peer address, tensors, routing, wire dtype or None) -> bytes sent
Sender = Callable[[str, Tensors, tensors_pb2.Routing, torch.dtype | None], Awaitable[int]]

KINDS = {
    "batch": tensors_pb2.TENSOR_KIND_BATCH,
    "act": tensors_pb2.TENSOR_KIND_ACTIVATION,
    "grad": tensors_pb2.TENSOR_KIND_GRADIENT,
    "allreduce": tensors_pb2.TENSOR_KIND_ADAPTER,
}


class WireTransport:
    """The pipeline's :class:`~pac.pipeline.transport.Transport` over the agents' wire.

    A message's routing names the job, step, micro-batch and kind; its ``stage`` field holds
    the sending device's index in the layout, so that pieces from several devices of one
    group never share a mailbox slot."""

    def __init__(
        self,
        job_id: str,
        device: str,
        settings: MeshJobSettings,
        send: Sender,
        mailbox: Mailbox,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.job_id = job_id
        self.device = device
        self.index = {name: i for i, name in enumerate(settings.layout.devices)}
        self.addresses = settings.addresses
        self._send = send
        self.mailbox = mailbox
        self.loop = loop

    def _routing(self, key: MessageKey) -> tensors_pb2.Routing:
        return tensors_pb2.Routing(
            job_id=self.job_id,
            step=key.step,
            micro_batch=key.micro_batch,
            stage=self.index[key.source],
            kind=KINDS[key.kind],
            sender=self.device,
        )

    def send(self, key: MessageKey, tensors: Tensors) -> None:
        address = self.addresses[key.target]
        contiguous = {name: t.detach().contiguous() for name, t in tensors.items()}
        call = self._send(address, contiguous, self._routing(key), None)
        asyncio.run_coroutine_threadsafe(call, self.loop).result()  # type: ignore[arg-type]

    def recv(self, key: MessageKey, timeout: float | None = None) -> Tensors:
        routing = self._routing(key)
        slot = RoutingKey.of(routing)
        message = asyncio.run_coroutine_threadsafe(
            self.mailbox.get(slot, timeout), self.loop
        ).result()
        return dict(message.tensors)


class TrainingSession:
    """Builds the replica (same seed on every device), its optimizer, cache and worker."""

    def __init__(
        self,
        job_id: str,
        device: str,
        settings: MeshJobSettings,
        cache_root: Path,
        transport: WireTransport,
    ) -> None:
        self.settings = settings
        self.loaded = load_model(settings.model_dir)
        torch.manual_seed(settings.seed)
        self.model = build_technique(
            settings.technique, self.loaded.family, settings.task, settings.technique_settings
        )
        optimizer, scheduler = make_optimizer(
            self.model.trainable_parameters(),
            settings.learning_rate,
            total_steps=settings.total_steps,
            warmup_ratio=settings.warmup_ratio,
        )
        cache = None
        if isinstance(self.model, ParallelAdaptersModel):
            key = CacheKey.for_model_dir(
                settings.model_dir, ",".join(self.model.points), settings.cache_precision
            )
            store = ActivationCache(cache_root / job_id, key)
            cache = LadderCache(store, self.loaded.family, self.model.points)
        self.worker = DeviceWorker(
            device, settings.layout, self.model, transport, optimizer, scheduler, cache
        )

    def run_step(
        self, step: int, batch: Tensors, sample_ids: list[str], loss_count: int
    ) -> StepResult:
        return self.worker.run_step(step, batch, sample_ids, loss_count)
