"""Resuming a mesh job that a coordinator restart interrupted, from its agents' checkpoints.

The coordinator that ran the job kept its state in memory, gone with it; but every agent of
the job wrote a checkpoint at every epoch's end (and every ``checkpoint_every`` steps)
beside its cache, and closing a job keeps it. The next coordinator queues the job again
(``JobStore.settle_interrupted``); its driver asks every agent for its newest checkpoint of
the job (the ReadCheckpoint RPC), takes the newest step whose checkpoints together hold
every trained parameter with its optimizer state (on a pipeline stage an agent holds its
own stage's; in the cache phase every agent holds a piece of them all: see
:func:`pac.engine.checkpoint.join_shards`), and restarts the job from it as after an
agent's loss (mesh_restart.py). The new attempt's id is past every attempt the
agents have seen, and the attempts they still hold open (the old coordinator could not
close them) are closed first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from coordinator.driver import LiveAgents
from coordinator.drivers.mesh_calls import close_job_on
from coordinator.registry import AgentLiveness, AgentRegistry
from pac.engine.checkpoint import join_shards
from pac.pipeline.job import job_of_attempt
from pac.wire.download import download_message
from protos.v1 import agent_pb2, agent_pb2_grpc

READ_CHECKPOINT_METHOD = "/pac.v1.Agent/ReadCheckpoint"
# In the job's output: the agents of its current attempt (what a restarted coordinator
# waits for before it resumes the job).
ATTEMPT_FILE = "attempt.json"

log = logging.getLogger("pac.coordinator.mesh")


@dataclass
class Found:
    """What the agents hold of a job: checkpoints by step (one per agent that has one),
    every attempt id seen, and the attempts each agent holds open."""

    by_step: dict[int, list[dict[str, torch.Tensor]]] = field(default_factory=dict)
    attempts: set[str] = field(default_factory=set)
    open: dict[str, list[str]] = field(default_factory=dict)

    def next_attempt(self) -> int:
        """An attempt number past every attempt seen."""
        return 1 + max((job_of_attempt(a)[1] for a in self.attempts), default=0)


async def read_checkpoints(
    channels: dict[str, grpc.aio.Channel], job_id: str, metadata: tuple[tuple[str, str], ...]
) -> Found:
    """Ask every agent for its newest checkpoint of ``job_id`` (an agent that fails to
    answer is left out, with a warning)."""
    request = agent_pb2.ReadCheckpointRequest(job_id=job_id).SerializeToString()
    names = sorted(channels)
    replies = await asyncio.gather(
        *(download_message(channels[n], READ_CHECKPOINT_METHOD, request, metadata) for n in names),
        return_exceptions=True,
    )
    found = Found()
    for name, reply in zip(names, replies, strict=True):
        if isinstance(reply, BaseException):
            log.warning("job %s: agent %s gave no checkpoint (%s)", job_id, name, reply)
            continue
        tensors, meta = reply
        found.attempts |= {a for a in meta.get("attempts", "").split(",") if a}
        found.open[name] = [a for a in meta.get("open", "").split(",") if a]
        if tensors:
            found.by_step.setdefault(int(meta.get("step", 0)), []).append(tensors)
    return found


def newest_complete(
    found: Found, trained: Iterable[str]
) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The newest step whose checkpoints together hold every parameter in ``trained``
    with its optimizer state, and that state merged (replicas of a stage hold the same
    bits: the first one's is taken); None when no step does."""
    required = set(trained)
    for step in sorted(found.by_step, reverse=True):
        merged: dict[str, torch.Tensor] = {}
        for tensors in found.by_step[step]:
            for name, value in tensors.items():
                merged.setdefault(name, value)
        merged = join_shards(merged)  # (the cache phase's agents each hold a piece)
        have = {name for name in merged if "::" not in name}
        with_state = {name.split("::", 1)[0] for name in merged if "::" in name}
        if required <= have and required <= with_state:
            return step, merged
    return None


async def close_stale(
    channels: dict[str, grpc.aio.Channel],
    found: Found,
    metadata: tuple[tuple[str, str], ...],
    keep_cache: bool = False,
) -> None:
    """Close the attempts the agents still hold open (nobody else will: the coordinator
    that opened them is gone); ``keep_cache``: the agents keep their caches for the next
    attempt."""
    await asyncio.gather(
        *(
            close_job_on(agent_pb2_grpc.AgentStub(channels[name]), attempt, metadata, keep_cache)
            for name, attempts in found.open.items()
            for attempt in attempts
        )
    )


def write_attempt(out_dir: Path, attempt: str, agents: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"attempt": attempt, "agents": sorted(agents)})
    (out_dir / ATTEMPT_FILE).write_text(text + "\n")


async def wait_for_agents(
    registry: AgentRegistry, out_dir: Path, timeout_s: float, poll_s: float = 0.2
) -> LiveAgents:
    """The registered agents once every agent of the job's last attempt (its
    ``attempt.json``) has registered again with this coordinator, or ``timeout_s`` later
    with those that have (an agent that went away for good is planned around)."""
    path = out_dir / ATTEMPT_FILE
    wanted = set(json.loads(path.read_text())["agents"]) if path.is_file() else set()
    deadline = time.monotonic() + timeout_s
    while True:
        listed = registry.agents()
        alive = {r.name for r, liveness in listed if liveness is AgentLiveness.ALIVE}
        if (wanted and wanted <= alive) or time.monotonic() > deadline:
            if wanted - alive:
                log.warning(
                    "agents %s of the interrupted job did not come back within %.0f s",
                    ", ".join(sorted(wanted - alive)),
                    timeout_s,
                )
            return listed
        await asyncio.sleep(poll_s)
