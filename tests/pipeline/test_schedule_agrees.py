"""What an agent's worker executes is the planner's instruction list: the same forwards and
backwards in the same 1F1B order, for every device of every plan shape."""

from __future__ import annotations

import itertools

import pytest

from pac.pipeline.schedule import one_f_one_b
from planner.plan import Action, DeviceGroup, Stage
from planner.schedule import one_f_one_b as planned_schedule


@pytest.mark.parametrize(
    ("stage_sizes", "micro_batches"),
    list(itertools.product([(1,), (1, 1), (2, 1), (1, 2, 1), (2, 2, 2, 1)], [1, 2, 3, 5, 8])),
)
def test_the_worker_runs_the_planned_order(
    stage_sizes: tuple[int, ...], micro_batches: int
) -> None:
    stages = []
    device = 0
    for index, size in enumerate(stage_sizes):
        names = tuple(f"d{device + k}" for k in range(size))
        device += size
        stages.append(Stage(index, index, index + 1, DeviceGroup(names, (1,) * size), 0.0, 0.0))
    planned = planned_schedule(tuple(stages), micro_batches)
    for stage in stages:
        for name in stage.group.devices:
            compute = [
                (op.action.value, op.micro_batch)
                for op in planned[name]
                if op.action in (Action.FORWARD, Action.BACKWARD)
            ]
            assert compute == one_f_one_b(stage.index, len(stages), micro_batches)
