"""One device's part of a training step: its stage's forwards and backwards in 1F1B order,
the transfers to and from neighbouring stages, the group's gradient all-reduce and the
optimizer step.

Every device of a job constructs the same model from the same seed, so all replicas start
equal; each device's optimizer covers all parameters but only steps those that received a
gradient (AdamW skips parameters without one), i.e. its own stage's. A micro-batch's loss
is divided by the whole mini-batch's count, so that the parts' gradients add up to the
single-device gradient of the mini-batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pac.engine.ladder_cache import LadderCache
from pac.pipeline.all_reduce import all_reduce_gradients
from pac.pipeline.batch_part import BatchPart
from pac.pipeline.entries import part_id
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.pipeline.routing import Rows, device_rows, micro_batch_rows, overlap
from pac.pipeline.schedule import one_f_one_b
from pac.pipeline.stage import StageComputation, StageOutput, stage_computation
from pac.pipeline.transport import MessageKey, MessageKind, Tensors, Transport
from pac.techniques.base import TunedModel


@dataclass
class StepResult:
    """What a device reports after a step: summed loss terms of its rows (last stage);
    in the cache phase, where the step's time went (``parts``, see ``step_clock``)."""

    loss_sum: float = 0.0
    count: int = 0
    samples: int = 0
    waited_seconds: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class _InFlight:
    leaves: Tensors
    output: StageOutput


def slice_rows(batch: Tensors, rows: Rows) -> Tensors:
    return {k: v[rows[0] : rows[1]] for k, v in batch.items()}


class DeviceWorker:
    """Runs ``device``'s share of every step of a job."""

    def __init__(
        self,
        device: str,
        layout: PipelineLayout,
        model: TunedModel,
        transport: Transport,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        cache: LadderCache | None = None,
        timeout: float = 300.0,
    ) -> None:
        self.device = device
        self.layout = layout
        self.stage_index, self.rank = layout.locate(device)
        self.spec = layout.stages[self.stage_index]
        self.model = model
        self.computation: StageComputation = stage_computation(
            model, self.spec.begin, self.spec.end
        )
        self.transport = transport
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.cache = cache
        self.timeout = timeout
        self.waited = 0.0  # seconds blocked on peers during the current step

    # ---- routing ---------------------------------------------------------------------
    def _neighbour(self, offset: int) -> StageSpec | None:
        index = self.stage_index + offset
        return self.layout.stages[index] if 0 <= index < len(self.layout.stages) else None

    def _key(
        self, step: int, kind: MessageKind, micro: int, source: str, target: str
    ) -> MessageKey:
        return MessageKey(step, kind, micro, source, target)

    def _send(
        self,
        step: int,
        kind: MessageKind,
        micro: Rows,
        index: int,
        mine: Rows,
        other: StageSpec,
        tensors: Tensors,
    ) -> None:
        for device, rows in zip(other.devices, device_rows(micro, other.shares), strict=True):
            common = overlap(mine, rows)
            if common is None:
                continue
            piece = slice_rows(tensors, (common[0] - mine[0], common[1] - mine[0]))
            self.transport.send(self._key(step, kind, index, self.device, device), piece)

    def _gather(
        self, step: int, kind: MessageKind, micro: Rows, index: int, mine: Rows, other: StageSpec
    ) -> Tensors:
        pieces = []
        started = time.perf_counter()
        for device, rows in zip(other.devices, device_rows(micro, other.shares), strict=True):
            if overlap(mine, rows) is not None:
                key = self._key(step, kind, index, device, self.device)
                pieces.append(self.transport.recv(key, timeout=self.timeout))
        self.waited += time.perf_counter() - started
        return {name: torch.cat([p[name] for p in pieces]) for name in pieces[0]}

    # ---- one step --------------------------------------------------------------------
    def run_step(self, step: int, part: BatchPart, train: bool = True) -> StepResult:
        """``part``: this device's rows of the mini-batch (at least its share of every
        micro-batch, with the keys this stage reads), their samples' fingerprints (cache
        keys, or None) and the whole mini-batch's size and loss count.

        ``train=False`` runs the forwards alone (no gradient, no backward, no optimizer
        step): what rebuilds a lost activation cache, which the backbone's forward alone
        fills, without touching what was trained."""
        with torch.set_grad_enabled(train):
            return self._run_step(step, part, train)

    def _run_step(self, step: int, part: BatchPart, train: bool) -> StepResult:
        loss_count = part.loss_count
        micro = micro_batch_rows(part.size, self.layout.micro_batches)
        mine = [device_rows(m, self.spec.shares)[self.rank] for m in micro]
        previous, following = self._neighbour(-1), self._neighbour(1)
        result = StepResult()
        self.waited = 0.0
        flight: dict[int, _InFlight] = {}
        order = one_f_one_b(self.stage_index, len(self.layout.stages), len(micro))
        for action, index in order:
            rows = mine[index]
            if rows[0] == rows[1]:
                continue  # this device has no rows of this micro-batch
            if action == "F":
                inputs: Tensors = {}
                if previous is not None:
                    inputs = self._gather(step, "act", micro[index], index, rows, previous)
                    for key, value in inputs.items():
                        if not train:
                            break
                        if self.computation.carries_grad(key) and value.is_floating_point():
                            value.requires_grad_(True)
                # Alone through every block (one stage), a device's rows are cut to the
                # columns they use, not to their micro-batch's.
                batch = part.rows(rows, own_columns=previous is None and following is None)
                output = self.computation.forward(inputs, batch)
                sample_ids = part.ids(rows)
                if self.cache is not None and sample_ids is not None and output.points:
                    entries = [part_id(s, self.stage_index) for s in sample_ids]
                    self.cache.store(entries, batch, output.points)
                if following is not None:
                    self._send(step, "act", micro[index], index, rows, following, output.outputs)
                else:
                    assert output.loss is not None
                    result.loss_sum += float(output.loss.detach())
                    result.count += output.count
                    result.samples += rows[1] - rows[0]
                if train:
                    flight[index] = _InFlight(inputs, output)
            elif train:
                done = flight.pop(index)
                if following is None:
                    assert done.output.loss is not None
                    (done.output.loss / loss_count).backward()
                else:
                    grads = self._gather(step, "grad", micro[index], index, rows, following)
                    names = [n for n in grads if done.output.outputs[n].requires_grad]
                    torch.autograd.backward(
                        [done.output.outputs[n] for n in names], [grads[n] for n in names]
                    )
                if previous is not None:
                    back = {
                        k: (v.grad if v.grad is not None else torch.zeros_like(v))
                        for k, v in done.leaves.items()
                        if v.requires_grad
                    }
                    self._send(step, "grad", micro[index], index, rows, previous, back)
        if train:
            self._all_reduce(step, micro)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.cache is not None:
            self.cache.cache.flush()
        result.waited_seconds = self.waited
        return result

    def _all_reduce(self, step: int, micro: list[Rows]) -> None:
        """Sum the group's gradients so that every member ends with the same bits.

        When every member computed rows of this step, they all hold gradients of the same
        parameters (they ran the same stage): a bucketed ring all-reduce of those, in name
        order (what the planner's cost model assumes). Otherwise (a member with no rows,
        e.g. in a short last mini-batch) each member sends its gradients to every other and
        all sum them in rank order."""
        group = self.spec.devices
        if len(group) == 1:
            return
        params = dict(self.model.named_parameters())
        if all(
            any(rows[0] < rows[1] for rows in (device_rows(m, self.spec.shares)[k] for m in micro))
            for k in range(len(group))
        ):
            names = sorted(n for n, p in params.items() if p.grad is not None)
            all_reduce_gradients(
                self.transport,
                group,
                self.device,
                step,
                [params[n] for n in names],
                timeout=self.timeout,
            )
            return
        own = {n: p.grad for n, p in params.items() if p.grad is not None}
        for peer in group:
            if peer != self.device:
                self.transport.send(self._key(step, "allreduce", 0, self.device, peer), own)
        contributions = [
            own
            if peer == self.device
            else self.transport.recv(
                self._key(step, "allreduce", 0, peer, self.device), timeout=self.timeout
            )
            for peer in group
        ]
        names = sorted({n for c in contributions for n in c})
        for name in names:
            parts = [c[name] for c in contributions if name in c]
            total = parts[0].clone()
            for part in parts[1:]:
                total += part
            params[name].grad = total
