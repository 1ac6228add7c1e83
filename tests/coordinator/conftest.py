"""Shared pieces of the coordinator tests: toy data, job specs, drivers that wait."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.core import Coordinator
from coordinator.driver import JobResult, LiveAgents, ProgressSink
from coordinator.jobs import Job, JobSpec, JobState, Progress
from coordinator.registry import AgentRegistry

POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "sad"]


def write_toy_jsonl(path: Path, count: int = 16) -> Path:
    """A learnable sentiment set: the cue word decides the label."""
    rows = []
    for index in range(count):
        positive = index % 2 == 0
        cue = (POSITIVE if positive else NEGATIVE)[index % 4]
        rows.append({"text": f"the film was {cue} today", "label": "pos" if positive else "neg"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    return write_toy_jsonl(tmp_path / "train.jsonl")


@pytest.fixture
def bert_dir(tiny_model_dir: Callable[[str], Path]) -> Path:
    return tiny_model_dir("bert")


@pytest.fixture
def spec(bert_dir: Path, toy_data: Path) -> JobSpec:
    """A valid tiny job: 2 epochs of parallel adapters, 4 steps each, with evaluation."""
    return JobSpec(model_dir=str(bert_dir), data_path=str(toy_data), eval_path=str(toy_data),
                   task="classification", technique="parallel-adapters", epochs=2,
                   batch_size=4, micro_batches=2, max_length=16)


class GatedDriver:
    """Reports LOADING then TRAINING epoch 1 and steps until ``release`` is set (or it is
    cancelled): lets a test catch a job mid-training without timing assumptions."""

    def __init__(self) -> None:
        self.training = threading.Event()
        self.release = threading.Event()

    def run(self, job: Job, agents: LiveAgents, progress: ProgressSink,
            cancelled: threading.Event) -> JobResult:
        progress(Progress(state=JobState.LOADING))
        progress(Progress(state=JobState.TRAINING, epoch=1, total_steps=10))
        step = 0
        while not (self.release.is_set() or cancelled.is_set()):
            step += 1
            progress(Progress(step=step, loss=1.0 / step, samples=4))
            self.training.set()
            cancelled.wait(0.02)
        return JobResult(metrics={"accuracy": 0.5})


@pytest.fixture
def gated_driver() -> GatedDriver:
    return GatedDriver()


@pytest.fixture
def make_coordinator(tmp_path: Path) -> Iterator[Callable[..., Coordinator]]:
    """``make_coordinator(state_dir=None, drivers=None)``: closed at the end of the test."""
    made: list[Coordinator] = []

    def make(state_dir: Path | None = None, **kwargs: object) -> Coordinator:
        coordinator = Coordinator(state_dir or tmp_path / "state",
                                  registry=AgentRegistry(heartbeat_interval_s=0.2),
                                  **kwargs)  # type: ignore[arg-type]
        made.append(coordinator)
        return coordinator

    yield make
    for coordinator in made:
        if not coordinator._stopping.is_set():
            coordinator.close()
