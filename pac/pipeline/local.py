"""A pipeline layout run in one process, one thread per device: the reference bed for the
mesh (tests and benchmarks compare it with single-device training)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from pac.data.encoding import EncodedSample
from pac.engine.ladder_cache import LadderCache
from pac.pipeline.batch_part import BatchPart, pipeline_parts
from pac.pipeline.layout import PipelineLayout
from pac.pipeline.transport import InProcessHub, Tensors
from pac.pipeline.worker import DeviceWorker, StepResult
from pac.techniques.base import TunedModel

ModelFactory = Callable[[], TunedModel]
OptimizerFactory = Callable[
    [TunedModel], tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]
]
CacheFactory = Callable[[str, TunedModel], LadderCache | None]


class InProcessMesh:
    """Every device of ``layout`` as a :class:`DeviceWorker` with its own model replica."""

    def __init__(
        self,
        layout: PipelineLayout,
        make_model: ModelFactory,
        make_optimizer: OptimizerFactory,
        make_cache: CacheFactory | None = None,
    ) -> None:
        self.layout = layout
        self.hub = InProcessHub()
        self.workers: dict[str, DeviceWorker] = {}
        for device in layout.devices:
            model = make_model()
            optimizer, scheduler = make_optimizer(model)
            cache = make_cache(device, model) if make_cache else None
            self.workers[device] = DeviceWorker(
                device, layout, model, self.hub.transport(device), optimizer, scheduler, cache
            )
        first = next(iter(self.workers.values()))
        layout.validate(len(first.model.family.blocks()))

    def step(
        self,
        step: int,
        batch: Tensors,
        samples: Sequence[EncodedSample] | None = None,
        train: bool = True,
    ) -> float:
        """One mini-batch on every device at once, each given only its rows and its stage's
        keys (as the coordinator sends them); returns the mini-batch's mean loss.
        ``train=False``: the forwards alone (see ``DeviceWorker.run_step``)."""
        head = next(iter(self.workers.values())).model.head
        count = head.count(batch)
        ids = [s.fingerprint for s in samples] if samples else None
        parts = pipeline_parts(self.layout, BatchPart.whole(batch, ids, count))
        results: dict[str, StepResult] = {}
        errors: list[BaseException] = []

        def run(device: str, worker: DeviceWorker) -> None:
            try:
                results[device] = worker.run_step(step, parts[device], train)
            except BaseException as error:  # surfaced to the caller below
                errors.append(error)

        threads = [
            threading.Thread(target=run, args=(d, w), name=f"device-{d}")
            for d, w in self.workers.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return sum(r.loss_sum for r in results.values()) / count
