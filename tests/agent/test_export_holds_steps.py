"""An export sends the trained tensors as they lie (no copy of the parameters and their
optimizer state) and holds the job's steps off until it is done, so that what it sends is
one step's state, not a mix of two."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import torch

from agent.runtime import AgentRuntime
from pac.pipeline.batch_part import BatchPart, pack_steps
from pac.pipeline.worker import StepResult
from pac.wire.mailbox import TensorMessage
from protos.v1 import tensors_pb2


class _Training:
    """A training session's surface as the runtime uses it: export and run_step (which
    changes the parameter in place, as an optimizer step does)."""

    def __init__(self) -> None:
        self.weight = torch.zeros(4)
        self.moment = torch.zeros(4)
        self.steps: list[int] = []
        self.stepping = threading.Event()
        self.worker = type("W", (), {"stage_index": 0})()

    def export(self, optimizer_state: bool = False) -> dict[str, torch.Tensor]:
        state = {"w": self.weight}
        if optimizer_state:
            state["w::exp_avg"] = self.moment
        return state

    def run_step(self, step: int, part: BatchPart) -> StepResult:
        self.stepping.set()
        self.weight.add_(1.0)
        self.moment.add_(1.0)
        self.steps.append(step)
        return StepResult(loss_sum=0.0, count=1, samples=1, parts={})


def test_an_export_is_the_live_state_and_steps_wait_for_it(tmp_path: Path) -> None:
    async def never_send(*args: Any) -> int:
        raise AssertionError("nothing is sent")

    async def scenario() -> None:
        runtime = AgentRuntime("solo", tmp_path, never_send)
        training = _Training()
        runtime.open_job("j").training = training  # type: ignore[assignment]
        part = BatchPart.whole({"labels": torch.zeros(1, dtype=torch.long)}, ["a"], 1)
        routing = tensors_pb2.Routing(
            job_id="j", step=3, micro_batch=1, kind=tensors_pb2.TENSOR_KIND_BATCH
        )
        runtime.mailbox.put(TensorMessage(routing, pack_steps([part]), {}, 0))

        async with runtime.exported_adapters("j", optimizer_state=True) as exported:
            # The tensors themselves, not copies.
            assert exported["w"] is training.weight
            assert exported["w::exp_avg"] is training.moment
            steps = runtime.run_training_steps("j", 3, 1, timeout=5)
            stepped = asyncio.ensure_future(anext(steps))
            await asyncio.sleep(0.2)
            # The step waits while the export holds the state: what it sends stays put.
            assert not stepped.done() and not training.stepping.is_set()
            assert torch.equal(exported["w"], torch.zeros(4))
        step, _ = await asyncio.wait_for(stepped, 5)
        assert step == 3 and training.steps == [3]
        assert torch.equal(training.weight, torch.ones(4))
        await steps.aclose()

    asyncio.run(scenario())
