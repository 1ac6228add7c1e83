"""Restarting a mesh job on the agents still answering when one goes away.

After every epoch, and every ``checkpoint_every`` steps when the job sets it, the
coordinator keeps what the agents trained together with its optimizer state
(:class:`KeptState`; at an epoch's end it is the export it evaluates anyway). When an agent
stops answering, the job starts over on the others (at most ``max_restarts`` times): a new
plan, the job opened again under a new attempt id (a frozen agent that wakes up cannot
mix its old messages into the new attempt), the kept state restored on every agent, and
the steps after the kept one. A parallel-adapters job's activation cache went with the
lost agent; the agents that stayed keep theirs (CloseJob ``keep_cache``) and the new attempt
takes them over (``adopt_cache_from``; a sample counts when its entries hold every ladder
point, whichever layout cut them: pac.pipeline.entries.EntryIndex). The restarted job
first rebuilds the rest of what it needs: forward-only pipeline steps, which train nothing
(the cache depends on the frozen backbone alone), over the samples of epoch 1's
mini-batches up to the kept step that no agent holds (the rest of epoch 1 then trains and
caches as usual), or of all of them when the kept step is past epoch 1 (then
redistribution and the cache phase).

No sample is lost or counted twice: the steps up to the kept one count once (in the
state), and the interrupted ones run again, on the same mini-batches in the same order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pac.pipeline.job import attempt_id

RESTARTS_FILE = "restarts.jsonl"


@dataclass(frozen=True)
class KeptState:
    """The trained parameters and their optimizer state (``"{param}::{state}"``, as in a
    checkpoint) after ``step`` optimizer steps: ``offset`` mini-batches of epoch ``epoch``
    done (0: the epoch is yet to begin)."""

    tensors: dict[str, torch.Tensor]
    step: int
    epoch: int
    offset: int = 0

    @classmethod
    def at(cls, tensors: dict[str, torch.Tensor], step: int, per_epoch: int) -> KeptState:
        """``tensors`` after ``step`` steps of epochs of ``per_epoch`` steps each."""
        return cls(tensors, step, step // per_epoch + 1, step % per_epoch)

    def parameters(self) -> dict[str, torch.Tensor]:
        return {name: value for name, value in self.tensors.items() if "::" not in name}


@dataclass
class Restarts:
    """A job's restarts: how many it may take, the state it would restart from, and the
    restarts taken (each: why, from which epoch, on which agents)."""

    allowed: int
    kept: KeptState | None = None
    taken: list[dict[str, object]] = field(default_factory=list)
    # The agents' attempt number of the job's first attempt here: past every attempt they
    # have seen when a restarted coordinator resumes the job (mesh_recovery.py).
    base: int = 0
    # The attempts (newest first) whose activation caches the agents that stayed kept for
    # the next attempt to take over (CloseJob keep_cache); empty: none kept.
    kept_caches: list[str] = field(default_factory=list)

    @property
    def left(self) -> int:
        return self.allowed - len(self.taken)

    def attempt_id(self, job_id: str) -> str:
        """The id the agents know this attempt by: the job's, then ``"{job}-r{n}"``."""
        return attempt_id(job_id, self.base + len(self.taken))

    def resume_epoch(self) -> int:
        """The epoch the next attempt trains first (from its ``kept.offset``-th step)."""
        return self.kept.epoch if self.kept else 1

    def take(self, why: str, agents: list[str], out_dir: Path) -> dict[str, object]:
        """Record a restart (and append it to the job's ``restarts.jsonl``)."""
        record: dict[str, object] = {
            "restart": len(self.taken) + 1,
            "why": why,
            "resume_epoch": self.resume_epoch(),
            "resume_offset": self.kept.offset if self.kept else 0,
            "resume_step": self.kept.step if self.kept else 0,
            "agents": agents,
            "time": time.time(),
        }
        self.taken.append(record)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / RESTARTS_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record
