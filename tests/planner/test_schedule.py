"""The instruction lists are a valid 1F1B schedule that runs to the end."""

from __future__ import annotations

from collections import Counter

from planner import Action, Cluster, LinkProfile, Network, Plan, plan
from planner.synthetic import device, synthetic_model


def _cluster() -> Cluster:
    speeds = [1e-3, 1e-3, 1.5e-3, 3e-3, 3e-3]
    return Cluster(
        tuple(device(f"d{k}", 12, s, 1 << 34) for k, s in enumerate(speeds)),
        Network(LinkProfile(5e9, 1e-5)),
    )


def _plans() -> list[Plan]:
    model = synthetic_model(12)
    out = [plan(_cluster(), model, "full", 12, micro_batches=m) for m in (1, 3, 6)]
    out.append(plan(_cluster(), model, "parallel-adapters", 12, micro_batches=4))
    return out


def _simulate(p: Plan) -> None:
    """Run all devices' lists: a RECV waits for its SEND; buffered sends never block."""
    pcs = dict.fromkeys(dict(p.instructions), 0)
    lists = dict(p.instructions)
    sent: Counter[tuple[str, str, int, int]] = Counter()
    progress = True
    while progress:
        progress = False
        for name, ops in lists.items():
            while pcs[name] < len(ops):
                op = ops[pcs[name]]
                if op.action is Action.SEND:
                    sent[(name, op.peer, op.micro_batch, op.stage)] += 1
                elif op.action is Action.RECV:
                    peer_stage = next(s.index for s in p.stages if op.peer in s.group.devices)
                    key = (op.peer, name, op.micro_batch, peer_stage)
                    if sent[key] == 0:
                        break
                    sent[key] -= 1
                pcs[name] += 1
                progress = True
    stuck = {n: str(lists[n][pc]) for n, pc in pcs.items() if pc < len(lists[n])}
    assert not stuck, f"deadlock: {stuck}"
    assert not +sent, f"sends never received: {+sent}"


def test_schedules_are_valid_1f1b() -> None:
    for p in _plans():
        stage_of = {d: s.index for s in p.stages for d in s.group.devices}
        share_of = {d: sh for s in p.stages for d, sh in zip(s.group.devices, s.group.shares,
                                                              strict=True)}
        for stage in p.stages:
            for name in stage.group.devices:
                ops = p.instructions_for(name)
                assert ops[-1].action is Action.OPTIMIZER_STEP
                assert sum(o.action is Action.OPTIMIZER_STEP for o in ops) == 1
                allreduces = [o for o in ops if o.action is Action.ALLREDUCE]
                assert len(allreduces) == (1 if len(stage.group) > 1 else 0)
                if allreduces:
                    assert ops[-2].action is Action.ALLREDUCE
                forwards = [o.micro_batch for o in ops if o.action is Action.FORWARD]
                backwards = [o.micro_batch for o in ops if o.action is Action.BACKWARD]
                if share_of[name] == 0:
                    assert not forwards and not backwards
                    continue
                assert forwards == list(range(p.micro_batches)) == sorted(backwards)
                for m in range(p.micro_batches):
                    f = next(k for k, o in enumerate(ops)
                             if o.action is Action.FORWARD and o.micro_batch == m)
                    b = next(k for k, o in enumerate(ops)
                             if o.action is Action.BACKWARD and o.micro_batch == m)
                    assert f < b
                # In flight at most: the stages after this one, plus one (1F1B's bound).
                live = peak = 0
                for o in ops:
                    live += (o.action is Action.FORWARD) - (o.action is Action.BACKWARD)
                    peak = max(peak, live)
                assert peak <= min(p.micro_batches, len(p.stages) - stage.index)
                for o in ops:
                    if o.action in (Action.SEND, Action.RECV):
                        assert abs(stage_of[o.peer] - stage.index) == 1
        _simulate(p)


def test_plans_use_pipelines_and_groups() -> None:
    shapes = [(len(p.stages), max(len(g) for g in p.groups)) for p in _plans()]
    assert any(stages > 1 for stages, _ in shapes)
    assert any(group > 1 for _, group in shapes)
