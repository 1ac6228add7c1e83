"""The plan as a value: stages, device groups, shares, the schedule per device."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from planner.errors import gib


@dataclass(frozen=True)
class DeviceGroup:
    """Devices that replicate one stage; each takes ``shares[k]`` samples of a micro-batch."""

    devices: tuple[str, ...]
    shares: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.devices)


@dataclass(frozen=True)
class Stage:
    """Layers ``[start, end)`` run by ``group``; times are per micro-batch, seconds."""

    index: int
    start: int
    end: int
    group: DeviceGroup
    time_s: float
    allreduce_s: float

    @property
    def layers(self) -> range:
        return range(self.start, self.end)


class Action(str, enum.Enum):
    """One step of a device's schedule (after DeepSpeed's PipeSchedule instructions)."""

    FORWARD = "F"
    BACKWARD = "B"
    SEND = "SEND"
    RECV = "RECV"
    ALLREDUCE = "ALLREDUCE"
    OPTIMIZER_STEP = "STEP"


@dataclass(frozen=True)
class Instruction:
    """``action`` on ``stage`` for ``micro_batch`` (-1 when it is per iteration).

    SEND/RECV name the ``peer`` device; a peer in the next stage means activations, a peer
    in the previous stage means gradients. ALLREDUCE names no peer: the whole group joins.
    """

    action: Action
    stage: int
    micro_batch: int = -1
    peer: str = ""

    def __str__(self) -> str:
        text = self.action.value
        if self.micro_batch >= 0:
            text += str(self.micro_batch)
        if self.peer:
            text += f"@{self.peer}"
        return text


@dataclass(frozen=True)
class Plan:
    """What the planner decided, and what it predicts.

    ``step_time_s``: one iteration (a mini-batch of ``global_batch`` samples in
    ``micro_batches`` micro-batches) under 1F1B, communication and all-reduce included.
    ``memory_bytes``: predicted peak per device (name, bytes), ``memory_limit_bytes`` beside.
    ``cache_shares``: per device, samples of each mini-batch in the cache phase.
    ``instructions``: per device, its 1F1B schedule for one iteration.
    ``notes``: the modelling choices and approximations that apply to this plan.
    """

    technique: str
    global_batch: int
    micro_batches: int
    stages: tuple[Stage, ...]
    step_time_s: float
    memory_bytes: tuple[tuple[str, int], ...]
    memory_limit_bytes: tuple[tuple[str, int], ...]
    cache_shares: tuple[tuple[str, int], ...]
    instructions: tuple[tuple[str, tuple[Instruction, ...]], ...]
    notes: tuple[str, ...] = ()
    strategy: str = "pac"

    @property
    def groups(self) -> tuple[DeviceGroup, ...]:
        return tuple(s.group for s in self.stages)

    @property
    def micro_batch_size(self) -> int:
        return self.global_batch // self.micro_batches

    def instructions_for(self, device: str) -> tuple[Instruction, ...]:
        """The schedule of one device (empty if the plan does not use it)."""
        return dict(self.instructions).get(device, ())

    def __str__(self) -> str:
        return format_plan(self)


def format_plan(plan: Plan) -> str:
    """A table: one row per stage and device, then the totals and the notes."""
    memory = dict(plan.memory_bytes)
    limit = dict(plan.memory_limit_bytes)
    cache = dict(plan.cache_shares)
    head = (
        f"plan ({plan.strategy}, {plan.technique}): {len(plan.stages)} stage(s), "
        f"batch {plan.global_batch} = {plan.micro_batches} micro-batch(es) of "
        f"{plan.micro_batch_size}, predicted step {plan.step_time_s * 1e3:.1f} ms"
    )
    rows = [("stage", "layers", "device", "share", "stage ms", "allreduce ms", "memory",
             "cache share")]
    for stage in plan.stages:
        for name, share in zip(stage.group.devices, stage.group.shares, strict=True):
            rows.append((
                str(stage.index),
                f"{stage.start}-{stage.end - 1}",
                name,
                str(share),
                f"{stage.time_s * 1e3:.2f}",
                f"{stage.allreduce_s * 1e3:.2f}",
                f"{gib(memory.get(name, 0))} / {gib(limit.get(name, 0))}",
                str(cache[name]) if name in cache else "-",
            ))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [head]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    unused = [n for n, _ in plan.memory_limit_bytes if n not in memory]
    if unused:
        lines.append(f"unused: {', '.join(unused)}")
    lines.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(lines)


def plan_to_dict(plan: Plan) -> dict[str, object]:
    """A JSON-ready dict of the plan (instructions as their short text, e.g. ``F3``)."""
    return {
        "strategy": plan.strategy,
        "technique": plan.technique,
        "global_batch": plan.global_batch,
        "micro_batches": plan.micro_batches,
        "step_time_s": plan.step_time_s,
        "stages": [
            {
                "index": s.index,
                "start": s.start,
                "end": s.end,
                "devices": list(s.group.devices),
                "shares": list(s.group.shares),
                "time_s": s.time_s,
                "allreduce_s": s.allreduce_s,
            }
            for s in plan.stages
        ],
        "memory_bytes": dict(plan.memory_bytes),
        "memory_limit_bytes": dict(plan.memory_limit_bytes),
        "cache_shares": dict(plan.cache_shares),
        "instructions": {name: [str(i) for i in ops] for name, ops in plan.instructions},
        "notes": list(plan.notes),
    }
