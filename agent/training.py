"""An agent's part of a mesh training job: its model replica, its stage's worker, its
cache, and the transport that carries the worker's tensors over the gRPC wire.

The worker runs in a thread (compute stays off the event loop); its sends and receives
hop onto the agent's event loop, where the gRPC client and the mailbox live.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import torch
from torch.utils.hooks import RemovableHandle

from agent.cache_adoption import adopt_cache
from agent.errors import BadRequest, JobClosed, WeightsMismatch
from agent.model_handoff import ModelHandoff
from pac.cache.key import CacheKey, fingerprint_model_dir
from pac.cache.store import ActivationCache
from pac.engine.checkpoint import CHECKPOINT_FILE, save_state, split_state, trained_state
from pac.engine.ladder_cache import LadderCache
from pac.engine.loading import load_model
from pac.engine.memory import release_backbone, rss_bytes
from pac.engine.schedule import make_optimizer, resume_schedule
from pac.pipeline.all_reduce import DEFAULT_BUCKET_BYTES
from pac.pipeline.batch_part import BatchPart
from pac.pipeline.cache_phase import CACHE_PHASE_ALL_REDUCE, DataParallelWorker, gather_state
from pac.pipeline.entries import EntryIndex, split_part_id
from pac.pipeline.job import MeshJobSettings
from pac.pipeline.transport import MessageKey, Tensors
from pac.pipeline.worker import DeviceWorker, StepResult
from pac.techniques import build_technique
from pac.techniques.backbone_dtype import backbone_dtype_of
from pac.techniques.parallel_adapters import ParallelAdaptersModel
from pac.wire.mailbox import Mailbox, RoutingKey
from protos.v1 import tensors_pb2

# send(peer address, tensors, routing, wire dtype or None) -> bytes sent
Sender = Callable[[str, Tensors, tensors_pb2.Routing, torch.dtype | None], Awaitable[int]]

KINDS = {
    "cache": tensors_pb2.TENSOR_KIND_CACHE_ENTRY,
    "batch": tensors_pb2.TENSOR_KIND_BATCH,
    "act": tensors_pb2.TENSOR_KIND_ACTIVATION,
    "grad": tensors_pb2.TENSOR_KIND_GRADIENT,
    "allreduce": tensors_pb2.TENSOR_KIND_ADAPTER,
}


REDISTRIBUTION_STEP = -2  # the step number of redistribution messages


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

    def _call(self, key: MessageKey, tensors: Tensors) -> Awaitable[int]:
        """The coroutine that sends one message to ``key.target``."""
        contiguous = {name: t.detach().contiguous() for name, t in tensors.items()}
        return self._send(self.addresses[key.target], contiguous, self._routing(key), None)

    def send(self, key: MessageKey, tensors: Tensors) -> None:
        call = self._call(key, tensors)
        asyncio.run_coroutine_threadsafe(call, self.loop).result()  # type: ignore[arg-type]

    def send_many(self, messages: Sequence[tuple[MessageKey, Tensors]]) -> None:
        """Send ``messages`` concurrently (one hop onto the event loop, the peers' acks
        awaited together)."""
        asyncio.run_coroutine_threadsafe(self._sends(messages), self.loop).result()

    def recv_many(self, keys: Sequence[MessageKey], timeout: float | None = None) -> list[Tensors]:
        """The messages ``keys`` (in that order), awaited together: one hop onto the event
        loop for all of them."""
        return asyncio.run_coroutine_threadsafe(self._gets(keys, timeout), self.loop).result()

    def exchange(
        self,
        messages: Sequence[tuple[MessageKey, Tensors]],
        keys: Sequence[MessageKey],
        timeout: float | None = None,
    ) -> list[Tensors]:
        """Send ``messages`` and receive ``keys`` (in that order) at once: waiting for the
        peers' acks overlaps waiting for their messages, in one hop onto the event loop. If
        either side fails, the other is cancelled and the error raised."""

        async def both() -> list[Tensors]:
            sends = asyncio.ensure_future(self._sends(messages))
            gets = asyncio.ensure_future(self._gets(keys, timeout))
            try:
                _, received = await asyncio.gather(sends, gets)
            except BaseException:
                sends.cancel()
                gets.cancel()
                raise
            return received

        return asyncio.run_coroutine_threadsafe(both(), self.loop).result()

    async def _sends(self, messages: Sequence[tuple[MessageKey, Tensors]]) -> None:
        await asyncio.gather(*(self._call(key, tensors) for key, tensors in messages))

    async def _gets(self, keys: Sequence[MessageKey], timeout: float | None) -> list[Tensors]:
        messages = await asyncio.gather(
            *(self.mailbox.get(RoutingKey.of(self._routing(key)), timeout) for key in keys)
        )
        return [dict(message.tensors) for message in messages]

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
        handoff: ModelHandoff | None = None,
    ) -> None:
        """``handoff``: where the job's profiling may have left its backbone, taken instead
        of loading the files again (agent/model_handoff.py)."""
        self.settings = settings
        if settings.model_fingerprint:
            local = fingerprint_model_dir(settings.model_dir)
            if local != settings.model_fingerprint:
                raise WeightsMismatch(
                    f"agent {device!r}: the model at {settings.model_dir} is not the job's "
                    f"(sha256 {local[:12]}..., the coordinator's {settings.model_fingerprint[:12]}"
                    "...); copy the coordinator's model directory to this device"
                )
        dtype = backbone_dtype_of(settings.technique_settings)
        backbone = None
        if handoff is not None and settings.technique == "parallel-adapters":
            packs = bool(settings.technique_settings.get("packed_backbone", True))
            backbone = handoff.take(settings.model_dir, dtype, packed=packs)
        self.loaded = load_model(settings.model_dir, dtype=dtype, backbone=backbone)
        torch.manual_seed(settings.seed)
        self.model = build_technique(
            settings.technique, self.loaded.family, settings.task, settings.technique_settings
        )
        optimizer, scheduler = make_optimizer(
            self.model.trainable_parameters(),
            settings.learning_rate,
            total_steps=settings.total_steps,
            warmup_ratio=settings.warmup_ratio,
            weight_decay=settings.weight_decay,
        )
        cache = None
        self.adopted_from: str | None = None
        if isinstance(self.model, ParallelAdaptersModel):
            key = CacheKey.for_model_dir(
                settings.model_dir, self.model.cache_ladder, settings.cache_precision
            )
            earlier = list(settings.extra.get("adopt_cache_from", []))
            self.adopted_from = adopt_cache(cache_root, job_id, earlier, key.namespace)
            store = ActivationCache(cache_root / job_id, key)
            cache = LadderCache(store, self.loaded.family, self.model.points)
        self.worker = DeviceWorker(
            device, settings.layout, self.model, transport, optimizer, scheduler, cache
        )
        self.job_id = job_id
        self.device = device
        self.transport = transport
        self.checkpoint_path = cache_root / job_id / CHECKPOINT_FILE
        # The cache is written by this device's redistribution and by peers' entries
        # arriving at the same time; one writer at a time.
        self.cache_lock = threading.Lock()
        self.owners: dict[str, str] = {}
        self.data_parallel: DataParallelWorker | None = None
        # A step in flight holds this; closing the job waits for it, so that nothing is
        # written into the cache after it was deleted.
        self.step_lock = threading.Lock()
        self.closed = False
        # A restarted job (restore): its steps numbered below the restored step only
        # rebuild the cache; the optimizer state restored waits here for the parameters it
        # belongs to.
        self.restored_step = 0
        self.pending_state: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}
        self._pending_hook: RemovableHandle | None = None

    @property
    def cache(self) -> ActivationCache:
        if self.worker.cache is None:
            raise ValueError("this job keeps no activation cache (not parallel adapters)")
        return self.worker.cache.cache

    def run_step(self, step: int, part: BatchPart) -> StepResult:
        """Epoch 1: this device's pipeline part; later epochs: its data-parallel part, on
        ``part`` (the rows the coordinator sent this device). Then a checkpoint at the end
        of every epoch and every ``checkpoint_every`` steps. One step at a time, and none
        while the job's cache is being deleted."""
        with self.step_lock:
            if self.closed:
                raise JobClosed(f"job {self.job_id!r} was closed on {self.device}")
            return self._run_step(step, part)

    def _run_step(self, step: int, part: BatchPart) -> StepResult:
        if step < self.restored_step:
            return self.worker.run_step(step, part, train=False)
        if self.data_parallel is None:
            result = self.worker.run_step(step, part)
        else:
            loss_sum, terms, rows = self.data_parallel.run_step(
                step, part.tensors, list(part.sample_ids or ()), part.loss_count
            )
            parts = self.data_parallel.clock.take()
            result = StepResult(loss_sum=loss_sum, count=terms, samples=rows, parts=parts)
        done = step + 1
        per_epoch = int(self.settings.extra.get("steps_per_epoch", 0))
        every = int(self.settings.extra.get("checkpoint_every", 0))
        if (per_epoch and done % per_epoch == 0) or (every and done % every == 0):
            started = time.perf_counter()
            # (in the cache phase, this device's part of the optimizer state)
            state = self.export(optimizer_state=True)
            save_state(self.checkpoint_path, state, done, done // per_epoch if per_epoch else 0)
            if self.data_parallel is not None:
                result.parts["checkpoint"] = time.perf_counter() - started
        return result

    def restore(self, state: Tensors, step: int, rebuild_cache: bool) -> tuple[int, int]:
        """Continue a job restarted on the agents still answering from ``state`` (the
        trained parameters and their optimizer state as the coordinator kept them after
        ``step`` optimizer steps). Every parameter takes its value now; the optimizer state
        goes to the parameters this device steps (its stage's, known at its first step, or
        all of them when the cache phase begins before it trained), so that what it exports
        stays its own. ``rebuild_cache``: the steps numbered below ``step`` only run the
        forwards to rebuild the cache (then training goes on at ``step``).
        Returns (parameters loaded, optimizer states waiting)."""
        if self.data_parallel is not None:
            raise BadRequest("restore a job's state before its cache phase, not in it")
        try:
            values, states = split_state(state)
        except ValueError as error:
            raise BadRequest(f"the restored state is malformed: {error}") from None
        params = dict(self.worker.model.named_parameters())
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise BadRequest(
                f"the restored state names parameters this job's model lacks: {unknown[:5]}"
            )
        for name, value in values.items():
            if value.shape != params[name].shape:
                raise BadRequest(
                    f"the restored {name} has shape {tuple(value.shape)}, the model's "
                    f"{tuple(params[name].shape)}"
                )
        with torch.no_grad():
            for name, value in values.items():
                params[name].copy_(value)
        self.pending_state = {
            params[name]: {k: v.clone() for k, v in kept.items()} for name, kept in states.items()
        }
        if self._pending_hook is None:
            self._pending_hook = self.worker.optimizer.register_step_pre_hook(
                self._install_pending_state
            )
        if self.worker.scheduler is not None:
            assert isinstance(self.worker.scheduler, torch.optim.lr_scheduler.LambdaLR)
            resume_schedule(self.worker.scheduler, step)
        self.restored_step = step if rebuild_cache and self.worker.cache is not None else 0
        return len(values), len(self.pending_state)

    def _install_pending_state(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        """Before the first optimizer step after a restore: the restored state of the
        parameters it steps (this device's stage's: in a stage's group the gradients are
        summed, so every member steps them all). The rest is other stages' state, which
        the cache phase's gather brings: dropped here."""
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None and param in self.pending_state:
                    optimizer.state[param] = self.pending_state.pop(param)
        self.pending_state = {}
        if self._pending_hook is not None:
            self._pending_hook.remove()
            self._pending_hook = None

    def redistribute(self, owners: dict[str, str]) -> tuple[dict[str, int], int]:
        """Send every cache entry whose sample another device owns to that device, then
        drop it here (each entry ends with exactly one owner). Returns (bytes sent per
        peer, entries sent)."""
        self.owners = owners
        outgoing: dict[str, list[str]] = {}
        for entry in self.cache.sample_ids():
            owner = owners[split_part_id(entry)[0]]
            if owner != self.device:
                outgoing.setdefault(owner, []).append(entry)
        with self.cache_lock:
            messages = {
                peer: _entry_messages(self.cache, entries) for peer, entries in outgoing.items()
            }
        sent_bytes: dict[str, int] = {}
        # Not under the lock: the peers store what we send under theirs, and may be sending
        # to us at the same time.
        for peer, batch in sorted(messages.items()):
            for number, message in enumerate(batch):
                key = MessageKey(REDISTRIBUTION_STEP, "cache", number, self.device, peer)
                self.transport.send(key, message)
                nbytes = sum(t.numel() * t.element_size() for t in message.values())
                sent_bytes[peer] = sent_bytes.get(peer, 0) + nbytes
        sent = [entry for entries in outgoing.values() for entry in entries]
        with self.cache_lock:
            self.cache.remove(sent)
        return sent_bytes, len(sent)

    def import_entries(self, tensors: Tensors) -> int:
        """Store cache entries a peer sent us."""
        with self.cache_lock:
            return import_entries(self.cache, tensors)

    def enter_cache_phase(self) -> tuple[int, int, int]:
        """Gather the side network's state from every device, shard its optimizer state
        (:class:`ShardedAdamW`: this device keeps its piece), release the backbone, and
        switch to data-parallel steps. Returns (freed bytes, RSS before, RSS after)."""
        model = self.worker.model
        if not isinstance(model, ParallelAdaptersModel) or self.worker.cache is None:
            raise ValueError("only a parallel-adapters job has a cache phase")
        devices = self.settings.layout.devices
        # Restored and not trained since (its cache was rebuilt): every device holds the
        # whole restored state.
        for param, kept in self.pending_state.items():
            self.worker.optimizer.state[param] = kept
        self.pending_state = {}
        groups = [stage.devices for stage in self.settings.layout.stages]
        gather_state(model, self.worker.optimizer, self.transport, groups, self.device)
        self.data_parallel = DataParallelWorker(
            self.device,
            devices,
            model,
            self.worker.cache,
            self.transport,
            self.worker.optimizer,
            self.worker.scheduler,
            self.owners,
            bucket_bytes=int(self.settings.extra.get("bucket_bytes", DEFAULT_BUCKET_BYTES)),
            algorithm=str(self.settings.extra.get("all_reduce", CACHE_PHASE_ALL_REDUCE)),
            # (0 or absent: the job set none, the default follows the model's width)
            chunk_bytes=int(self.settings.extra.get("cache_chunk_bytes", 0)) or None,
        )
        before = rss_bytes()
        freed = release_backbone(self.loaded.family, keep_lm_head=self.settings.task.generates_text)
        return freed, before, rss_bytes()

    def complete_samples(self) -> list[str]:
        """The samples whose every ladder point this device's cache holds (a restarted
        attempt's, taken over from the earlier attempt: agent/cache_adoption.py); entries
        of samples that lack points (a rebuild cut short) are deleted. Sorted."""
        if self.worker.cache is None:
            return []
        with self.cache_lock:
            entries = EntryIndex(self.cache)
            complete = entries.complete(self.worker.cache.points)
            partial = [e for e in self.cache.sample_ids() if split_part_id(e)[0] not in complete]
            if partial:
                self.cache.remove(partial)
        return sorted(complete)

    def discard_cache(self, keep: bool = False) -> int:
        """Delete this job's activation cache (the job is over; no other job reads it: each
        keeps its own under its id) unless ``keep`` (a restart's next attempt takes it over)
        or its settings say ``keep_cache``; returns the bytes deleted. The checkpoint
        beside it stays."""
        with self.step_lock:  # (a step still running ends first: its waits were cancelled)
            self.closed = True
            if self.worker.cache is None or keep or self.settings.extra.get("keep_cache"):
                if self.worker.cache is not None:
                    with self.cache_lock:
                        self.cache.flush()
                return 0
            with self.cache_lock:
                return self.cache.delete()

    def export(self, optimizer_state: bool = False) -> Tensors:
        """The parameters this replica trained (all of them after the cache phase's
        gather; its own stage's before): the coordinator merges the agents' exports.
        ``optimizer_state``: with their optimizer state (``"{param}::{state}"``), what
        the job restarts from if an agent goes away; in the cache phase, this device's
        pieces of it and the parameters that begin in them
        (:meth:`ShardedAdamW.state`: the agents' exports together make it whole). The
        tensors themselves, not copies: the next step changes them in place (the agent's
        runtime holds its steps off while it sends them)."""
        if self.data_parallel is not None:
            if optimizer_state:
                return self.data_parallel.state()
            return self.worker.model.trainable_state_dict()
        state = trained_state(self.worker.model, self.worker.optimizer)
        if optimizer_state:
            return state
        return {n: t for n, t in self.worker.model.trainable_state_dict().items() if n in state}


def _entry_messages(
    cache: ActivationCache, entries: list[str], max_bytes: int = 8 << 20
) -> list[Tensors]:
    """Cache entries in their stored form, packed a few MiB to a message: tensors named
    ``"{entry}|{point}"`` plus ``"{entry}|crc"``."""
    messages: list[Tensors] = []
    current: Tensors = {}
    size = 0
    for entry in entries:
        stored, crc = cache.export_entry(entry)
        for name, tensor in stored.items():
            # A copy: the stored tensors are views into a shard that remove() rewrites.
            current[f"{entry}|{name}"] = tensor.clone()
            size += tensor.numel() * tensor.element_size()
        current[f"{entry}|crc"] = torch.tensor(crc, dtype=torch.int64)
        if size >= max_bytes:
            messages.append(current)
            current, size = {}, 0
    if current:
        messages.append(current)
    return messages


def import_entries(cache: ActivationCache, tensors: Tensors) -> int:
    """Store the entries of one redistribution message (verified by their crc)."""
    grouped: dict[str, Tensors] = {}
    for name, tensor in tensors.items():
        entry, _, part = name.rpartition("|")
        grouped.setdefault(entry, {})[part] = tensor
    for entry, parts in grouped.items():
        crc = int(parts.pop("crc"))
        cache.import_entry(entry, parts, crc)
    cache.flush()
    return len(grouped)
