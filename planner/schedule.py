"""The 1F1B schedule of one iteration as an instruction list per device."""

from __future__ import annotations

from planner.plan import Action, Instruction, Stage


def _ranges(stage: Stage) -> list[tuple[str, int, int]]:
    """(device, first sample, end sample) of each member's share of a micro-batch."""
    out = []
    start = 0
    for name, share in zip(stage.group.devices, stage.group.shares, strict=True):
        out.append((name, start, start + share))
        start += share
    return out


def _overlapping(stage: Stage, lo: int, hi: int) -> list[str]:
    """Members of ``stage`` that hold any of the samples ``[lo, hi)``."""
    return [name for name, a, b in _ranges(stage) if a < hi and lo < b and a < b]


def one_f_one_b(
    stages: tuple[Stage, ...], micro_batches: int
) -> dict[str, tuple[Instruction, ...]]:
    """Per device: warm-up forwards, then forward/backward pairs, then the cool-down.

    Stage ``s`` of ``S`` runs ``min(S - s - 1, M)`` warm-up forwards. A forward receives
    its samples' activations from the previous stage's members that computed them and sends
    its outputs to the next stage's members that need them; a backward does the same with
    gradients in the other direction. After the last backward the group all-reduces (when
    it has more than one member) and every device takes one optimizer step.
    """
    count = len(stages)
    m = micro_batches
    plan: dict[str, tuple[Instruction, ...]] = {}
    for s, stage in enumerate(stages):
        before = stages[s - 1] if s > 0 else None
        after = stages[s + 1] if s + 1 < count else None
        for name, lo, hi in _ranges(stage):
            ops: list[Instruction] = []
            if hi > lo:
                senders = _overlapping(before, lo, hi) if before else []
                receivers = _overlapping(after, lo, hi) if after else []

                def forward(mb: int, ops: list[Instruction] = ops,
                            senders: list[str] = senders, receivers: list[str] = receivers,
                            s: int = s) -> None:
                    ops.extend(Instruction(Action.RECV, s, mb, p) for p in senders)
                    ops.append(Instruction(Action.FORWARD, s, mb))
                    ops.extend(Instruction(Action.SEND, s, mb, p) for p in receivers)

                def backward(mb: int, ops: list[Instruction] = ops,
                             senders: list[str] = senders, receivers: list[str] = receivers,
                             s: int = s) -> None:
                    ops.extend(Instruction(Action.RECV, s, mb, p) for p in receivers)
                    ops.append(Instruction(Action.BACKWARD, s, mb))
                    ops.extend(Instruction(Action.SEND, s, mb, p) for p in senders)

                warmup = min(count - s - 1, m)
                for mb in range(warmup):
                    forward(mb)
                for k in range(m - warmup):
                    forward(warmup + k)
                    backward(k)
                for mb in range(m - warmup, m):
                    backward(mb)
            if len(stage.group) > 1:
                ops.append(Instruction(Action.ALLREDUCE, s))
            ops.append(Instruction(Action.OPTIMIZER_STEP, s))
            plan[name] = tuple(ops)
    return plan
