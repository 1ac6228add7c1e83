"""Epochs 2..N on the mesh: every device trains the whole side network from its cache.

After epoch 1 each device holds, per sample it computed, the ladder points of its own
stage (cache entry ``"{fingerprint}@{stage}"``; a step reads a sample's points from the
entries that hold them, :class:`pac.pipeline.entries.EntryIndex`).
:mod:`pac.pipeline.ownership` gives every sample one owner (shares proportional to the
devices' speed); redistribution moves each entry to its sample's owner;
:func:`gather_state` gives every device every stage's side-network parameters and
optimizer state. Then a step is: each device computes the loss of the
mini-batch's samples it owns (divided by the whole mini-batch's count), the gradients are
summed by a bucketed reduce-scatter (:mod:`pac.pipeline.all_reduce`, a ring by default),
each device steps AdamW on its chunk of every bucket, holding that chunk's optimizer state
only, and an all-gather gives every device the updated parameters
(:mod:`pac.pipeline.sharded_adam`, ZeRO stage 1): the result is the single-device result
whatever the shares.

A device computes its rows in chunks of about ``chunk_bytes`` of decoded ladder points (by
default :func:`pac.pipeline.row_chunks.default_chunk_bytes`),
each at its own longest row where the labels are per sample (:mod:`pac.pipeline.row_chunks`),
accumulating the gradients: its peak memory holds one chunk's points and activations, not
its whole share's (the same sum, in another order). The gradients accumulate in the
all-reduce's bucket vectors, kept from step to step (:class:`GradientBuckets`), and the
parameters in vectors of the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pac.engine.checkpoint import trained_state
from pac.engine.ladder_cache import LadderCache
from pac.pipeline.all_reduce import DEFAULT_BUCKET_BYTES, GradientBuckets, recv_all, send_all
from pac.pipeline.entries import EntryIndex
from pac.pipeline.row_chunks import (
    chunk_rows,
    default_chunk_bytes,
    per_sample_labels,
    take_rows,
)
from pac.pipeline.sharded_adam import ShardedAdamW
from pac.pipeline.step_clock import StepClock
from pac.pipeline.transport import MessageKey, Tensors, Transport
from pac.techniques.parallel_adapters import ParallelAdaptersModel

STATE_STEP = -1  # the step number of the messages that gather the side network's state
# The bucketed ring by default, as the design asks (and as the planner prices it). The
# side network's gradients are small, so latency, not bandwidth, is what they cost: the job
# setting ``all_reduce: direct`` takes two rounds whatever the device count instead of the
# ring's 2 (n - 1), with the same bytes per device (about 15% off a cached MiniLM step on
# 4 agents sharing 2 cores).
CACHE_PHASE_ALL_REDUCE = "ring"


def gather_state(
    model: ParallelAdaptersModel,
    optimizer: torch.optim.Optimizer,
    transport: Transport,
    groups: Sequence[Sequence[str]],
    me: str,
    timeout: float | None = 300.0,
) -> int:
    """Give every device every stage's trained parameters and optimizer state (``groups``:
    each stage's devices, which hold the same state). A stage's group sends its state to
    the devices outside it, one member to each in turn: a device gets one message per
    other stage, and replicas send each other nothing (a one-stage layout sends nothing
    at all). Returns how many parameters this device took from others."""
    devices = [d for group in groups for d in group]
    mine_group = next(group for group in groups if me in group)
    targets = [
        peer
        for peer in devices
        if peer not in mine_group and mine_group[devices.index(peer) % len(mine_group)] == me
    ]
    senders = [group[devices.index(me) % len(group)] for group in groups if me not in group]
    mine = trained_state(model, optimizer) if targets else {}
    send_all(transport, [(MessageKey(STATE_STEP, "allreduce", 0, me, p), mine) for p in targets])
    states = recv_all(
        transport, [MessageKey(STATE_STEP, "allreduce", 0, s, me) for s in senders], timeout
    )
    params = dict(model.named_parameters())
    taken = 0
    for received in states:
        for name, value in received.items():
            if "::" in name:
                continue
            param = params[name]
            if param in optimizer.state:
                continue  # this device trained it too (a replica in its group): same bits
            with torch.no_grad():
                param.copy_(value)
            optimizer.state[param] = {
                key.split("::", 1)[1]: received[key].clone()
                for key in received
                if key.startswith(name + "::")
            }
            taken += 1
    return taken


class DataParallelWorker:
    """One device in the cache phase (see the module docstring)."""

    def __init__(
        self,
        device: str,
        devices: Sequence[str],
        model: ParallelAdaptersModel,
        cache: LadderCache,
        transport: Transport,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        owners: dict[str, str],
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        algorithm: str = CACHE_PHASE_ALL_REDUCE,
        chunk_bytes: int | None = None,
    ) -> None:
        if chunk_bytes is not None and chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
        self.device, self.devices = device, list(devices)
        self._chunk_bytes = chunk_bytes  # (None: the job set none)
        self.model, self.cache = model, cache
        self.entries: EntryIndex | None = None  # (read from the cache at the first step)
        self.transport, self.scheduler = transport, scheduler
        self.owners = owners
        self.clock = StepClock()
        # The side network's gradients, views of all-reduce buckets; its parameters, views
        # of vectors laid out as them; and this device's share of their optimizer state.
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.gradients = GradientBuckets(trainable, bucket_bytes)
        names = {p: n for n, p in model.named_parameters()}
        self.sharded = ShardedAdamW(optimizer, self.gradients, names, devices, device, algorithm)

    @property
    def chunk_bytes(self) -> int:
        """The job's chunk, or the default for the model (its width, the cache's points)."""
        if self._chunk_bytes is None:
            self._chunk_bytes = default_chunk_bytes(self.cache, self.model.family.hidden_size)
        return self._chunk_bytes

    def ladder(self, fingerprints: Sequence[str], batch: Tensors) -> Tensors:
        """The rows' ladder points from the entries that hold them (one read per group of
        points that the same entries hold: per stage of the layout that wrote them), padded
        to the batch's length."""
        if self.entries is None:
            self.entries = EntryIndex(self.cache.cache)
        where = self.entries.locate(fingerprints, self.cache.points)
        groups: dict[tuple[str, ...], list[str]] = {}
        for point in self.cache.points:
            groups.setdefault(tuple(w[point] for w in where), []).append(point)
        ladder: Tensors = {}
        for ids, points in groups.items():
            padded, _ = self.cache.cache.get_batch(list(ids), points, self.cache.dtype)
            ladder.update(padded)
        for point, value in ladder.items():
            length = batch[self.cache.mask_keys[point]].shape[1]
            if length != value.shape[1]:  # (F.pad copies even when it adds nothing)
                ladder[point] = F.pad(value, (0, 0, 0, length - value.shape[1]))
        return ladder

    def run_step(
        self, step: int, batch: Tensors, sample_ids: list[str], loss_count: int
    ) -> tuple[float, int, int]:
        """Train on ``batch``: the rows of the mini-batch whose samples this device owns
        (the coordinator sends each device only those); returns (loss sum, terms, rows)."""
        strangers = [s for s in sample_ids if self.owners.get(s) != self.device]
        if strangers:
            raise ValueError(
                f"{self.device} was sent {len(strangers)} rows of samples it does not own "
                f"(e.g. {strangers[0][:12]}...); send each device only its owned rows"
            )
        self.gradients.zero_()
        self.model.train()
        loss_sum, terms = 0.0, 0
        clock = self.clock
        width = self.model.family.hidden_size
        trim = per_sample_labels(batch)
        mask_keys = list(self.cache.mask_keys.values())
        for rows in chunk_rows(batch, self.cache, width, self.chunk_bytes):
            mine = take_rows(batch, rows, mask_keys, trim)
            with clock.part("ladder"):
                ladder = self.ladder([sample_ids[row] for row in rows], mine)
            with clock.part("compute"):
                outputs = self.model.forward_from_ladder(ladder, mine)
                loss, count = self.model.loss_terms(outputs, mine)
                (loss / loss_count).backward()
                loss_sum += float(loss.detach())
                terms += count
            del ladder, outputs, loss  # (this chunk's memory, before the next one's)
        self.sharded.step(self.transport, step, clock)
        if self.scheduler is not None:
            with clock.part("optimizer"):
                self.scheduler.step()
        # (the gradients stay in their buckets until the next step zeroes them)
        return loss_sum, terms, len(sample_ids)

    def state(self) -> Tensors:
        """This device's part of the trained state (:meth:`ShardedAdamW.state`)."""
        return self.sharded.state()
