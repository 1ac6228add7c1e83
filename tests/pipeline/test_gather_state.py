"""Before the cache phase every device gets every stage's side-network state: one message
per other stage, none between the replicas of a stage."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
import torch
from torch import nn

from pac.pipeline.cache_phase import gather_state
from pac.pipeline.transport import InProcessHub, MessageKey, Tensors


class _Counting:
    def __init__(self, hub: InProcessHub, device: str) -> None:
        self.inner = hub.transport(device)
        self.sent: list[str] = []
        self.received = 0

    def send(self, key: MessageKey, tensors: Tensors) -> None:
        self.sent.append(key.target)
        self.inner.send(key, tensors)

    def recv(self, key: MessageKey, timeout: float | None = None) -> Tensors:
        self.received += 1
        return self.inner.recv(key, timeout)


def replica(stage: int, stages: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model of one linear layer per stage whose own stage's layer holds ``stage + 1``
    (and Adam state of its own), the others' something else (and no state)."""
    model = nn.Sequential(*(nn.Linear(3, 3) for _ in range(stages)))
    with torch.no_grad():
        for index, layer in enumerate(model):
            for param in layer.parameters():
                param.fill_(stage + 1 if index == stage else -9.0)
    optimizer = torch.optim.Adam(model.parameters())
    for param in model[stage].parameters():
        optimizer.state[param] = {
            "exp_avg": torch.full_like(param, 10.0 * (stage + 1)),
            "step": torch.tensor(4.0),
        }
    return model, optimizer


@pytest.mark.parametrize(
    "groups",
    [
        [["a", "b"], ["c", "d"]],
        [["a"], ["b", "c", "d"]],
        [["a"], ["b"], ["c"], ["d"]],
        [["a", "b", "c", "d"]],
    ],
)
def test_every_device_ends_with_every_stage_s_state(groups: list[list[str]]) -> None:
    stage_of = {d: s for s, group in enumerate(groups) for d in group}
    replicas = {d: replica(s, len(groups)) for d, s in stage_of.items()}
    hub = InProcessHub()
    transports = {d: _Counting(hub, d) for d in stage_of}
    with ThreadPoolExecutor(len(stage_of)) as pool:
        taken = dict(
            zip(
                stage_of,
                pool.map(
                    lambda d: gather_state(
                        cast(Any, replicas[d][0]), replicas[d][1], transports[d], groups, d, 30
                    ),
                    stage_of,
                ),
                strict=True,
            )
        )
    for device, (model, optimizer) in replicas.items():
        for stage, layer in enumerate(model):
            for param in layer.parameters():
                assert torch.all(param == stage + 1), (device, stage)
                state = optimizer.state[param]
                assert torch.all(state["exp_avg"] == 10.0 * (stage + 1)), (device, stage)
        # each other stage's two parameters (weight, bias), from one message per stage
        assert taken[device] == 2 * (len(groups) - 1)
        assert transports[device].received == len(groups) - 1
    # every device outside a stage is sent its state exactly once, by one of its members
    for stage, group in enumerate(groups):
        targets = sorted(t for d in group for t in transports[d].sent)
        assert targets == sorted(d for d in stage_of if stage_of[d] != stage)
