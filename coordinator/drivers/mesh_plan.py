"""The mesh driver's plan: measure the agents, then ask the planner.

Each agent times the job's blocks on its own hardware at two micro-batch sizes (the slope
is its seconds per sample, the intercept its fixed cost per micro-batch) and, for parallel
adapters, the side network's forward + backward at both sizes too (its fixed cost adds to
the blocks'; for a baseline, the blocks' backward as that technique runs it); and it
measures its
links to the agents after it in the list (latency and bandwidth, one pair at a time). The
planner gets those numbers: the Planner service when the coordinator was given one
(``--planner``), else the library in this process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from coordinator.drivers.alike_agents import alike_groups, median_timings
from coordinator.drivers.mesh_job import JobInputs, packs_rows
from coordinator.drivers.profile_pools import Measurer, measurers, pool_of
from coordinator.jobs import JobSpec
from pac.data.batches import batches
from pac.data.collate import collate
from pac.engine.dataset import pad_id
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.pipeline.micro_columns import one_stage_token_scale, token_scale
from protos.v1 import agent_pb2, agent_pb2_grpc

if TYPE_CHECKING:
    from planner.plan import Plan
    from planner.profiles import Cluster, LinkProfile, ModelProfile, Network

log = logging.getLogger("pac.coordinator.mesh")

PROFILE_SEQ_LEN = 64
PROFILE_REPEATS = 2
# An agent measured beside at least this many alike agents (itself included) times each
# thing once after its warm-up: the median over the agents stands for the median of
# repeats (the same number of timings or more, and the agents measure at once).
ALIKE_MEDIAN_AGENTS = 3
ALIKE_REPEATS = 1
PROFILE_MAX_BATCH = 8
LINK_PAYLOAD_BYTES = 1 << 20
LINK_REPEATS = 3
# Mini-batches of epoch 1 that tell the planner how much padding each micro-batch size
# computes (their lengths are a sample of the data set's).
TOKEN_SCALE_BATCHES = 64


class PlanningError(RuntimeError):
    """The planner refused the job or could not be reached; the message says why."""


@dataclass(frozen=True)
class BlockTiming:
    """An agent's measured cost of the job's blocks: ``per_sample_s`` of one block (mean
    over blocks), ``overhead_s`` per micro-batch through all blocks, whatever its size;
    ``side_per_sample_s``: one side block's forward + backward (mean; 0 = not measured);
    ``backward_ratio``: a baseline's backward over forward time of the blocks (0 = not
    measured); ``measured_by``: the agent of the same CPU pool that measured for this one
    ("" = itself)."""

    per_sample_s: float
    overhead_s: float
    side_per_sample_s: float = 0.0
    backward_ratio: float = 0.0
    measured_by: str = ""


def fit_timing(small: tuple[int, list[float]], large: tuple[int, list[float]]) -> BlockTiming:
    """The line through two profiles ``(batch size, per-block seconds)`` (see
    :func:`planner.estimate.split_fixed_cost`): per block and sample, and per micro-batch
    through all blocks."""
    from planner.estimate import split_fixed_cost

    (b1, t1), (b2, t2) = small, large
    if not t1 or len(t1) != len(t2):
        raise ValueError("the two profiles must time the same, non-empty list of blocks")
    per_sample, fixed = split_fixed_cost(b1, sum(t1), b2, sum(t2))
    return BlockTiming(per_sample_s=per_sample / len(t1), overhead_s=fixed)


def side_timing(
    micro: int, seconds: float, one_sample_seconds: float, blocks: int
) -> tuple[float, float]:
    """(one side block's forward + backward per sample, the whole side network's fixed
    seconds per micro-batch) from its timing at ``micro`` samples and at one sample (0 = not
    measured: an agent's profile from before it timed both, and all its time counts per
    sample). The fixed cost is its many small matrices: at half a core of this CPU, 0.16 s
    of BERT-large's 0.38 s at one sample."""
    if seconds <= 0:
        return 0.0, 0.0
    if one_sample_seconds <= 0 or micro <= 1:
        return seconds / micro / blocks, 0.0
    from planner.estimate import split_fixed_cost

    per_sample, fixed = split_fixed_cost(1, one_sample_seconds, micro, seconds)
    return per_sample / blocks, fixed


def measuring_alike(
    chosen: list[Measurer], profiles: dict[str, agent_pb2.DeviceProfile]
) -> dict[str, int]:
    """Per measuring agent, how many of the measuring agents (itself included) are of its
    hardware (coordinator/drivers/alike_agents.py)."""
    measuring = {m.name for m in chosen}
    counts = {}
    for group in alike_groups(profiles):
        members = [name for name in group if name in measuring]
        counts.update({name: len(members) for name in members})
    return counts


async def profile_agents(
    stubs: dict[str, agent_pb2_grpc.AgentStub],
    spec: JobSpec,
    metadata: tuple[tuple[str, str], ...],
    max_age_s: float = 0.0,
    profiles: dict[str, agent_pb2.DeviceProfile] | None = None,
) -> dict[str, BlockTiming]:
    """The agents time the job's blocks at one sample and at the job's micro-batch size
    (at most ``PROFILE_MAX_BATCH``; all at once, as they will train at once), or answer
    with their profile of the same request at most ``max_age_s`` old. Of the agents that
    share CPU cores (``profiles``' ``cpu_pool``) one measures for the others
    (coordinator/drivers/profile_pools.py); agents of the same hardware then take the
    median of their timings (coordinator/drivers/alike_agents.py)."""
    # Two sizes tell the fixed cost from the per-sample one; beyond a few samples a
    # larger batch only makes profiling slower.
    micro = min(PROFILE_MAX_BATCH, max(2, spec.batch_size // max(1, spec.micro_batches)))
    names = list(stubs)

    request = agent_pb2.ProfileRequest(
        model_dir=str(Path(spec.model_dir).resolve()),
        batch_size=micro,
        seq_len=min(spec.max_length, PROFILE_SEQ_LEN),
        repeats=PROFILE_REPEATS,
        side_network=spec.technique == "parallel-adapters",
        second_batch_size=1,
        backward_technique="" if spec.technique == "parallel-adapters" else spec.technique,
        # PAC's agents run the frozen blocks prepacked unless the job turns it off.
        packed_backbone=spec.technique == "parallel-adapters"
        and bool(spec.technique_settings.get("packed_backbone", True)),
        max_age_s=max_age_s,
    )
    chosen = measurers(names, profiles or {})
    alike = measuring_alike(chosen, {n: p for n, p in (profiles or {}).items() if n in stubs})

    def ask(measurer: Measurer) -> agent_pb2.ProfileRequest:
        fewer = alike.get(measurer.name, 1) >= ALIKE_MEDIAN_AGENTS
        if not measurer.pool_agents and not fewer:
            return request
        changed = agent_pb2.ProfileRequest()
        changed.CopyFrom(request)
        changed.pool_agents = measurer.pool_agents
        if fewer:
            changed.repeats = ALIKE_REPEATS
        return changed

    replies = await asyncio.gather(
        *(stubs[m.name].Profile(ask(m), metadata=metadata) for m in chosen)
    )
    timings = {}
    for measurer, many in zip(chosen, replies, strict=True):
        t1 = list(many.second_batch_seconds)
        t2 = [layer.forward_seconds for layer in many.layers]
        if t1 and len(t1) == len(t2):
            fitted = fit_timing((1, t1), (micro, t2))
            side_s, side_fixed = side_timing(
                micro, many.side_seconds, many.side_second_batch_seconds, len(t2)
            )
            fitted = replace(fitted, overhead_s=fitted.overhead_s + side_fixed)
            backward = sum(layer.backward_seconds for layer in many.layers)
            ratio = backward / sum(t2) if sum(t2) > 0 else 0.0
            for name, factor in measurer.stands_for:
                timings[name] = BlockTiming(
                    fitted.per_sample_s * factor, fitted.overhead_s * factor,
                    side_s * factor, ratio, "" if name == measurer.name else measurer.name,
                )
    ages = {
        m.name: round(r.age_s) for m, r in zip(chosen, replies, strict=True) if r.age_s > 0
    }
    if ages:
        log.info("profiles measured earlier, age in seconds by agent: %s", ages)
    log.info("measured blocks by agent: %s", timings)
    # Alike agents take their median (coordinator/drivers/alike_agents.py).
    return median_timings(timings, profiles or {})


async def measure_links(
    stubs: dict[str, agent_pb2_grpc.AgentStub],
    addresses: dict[str, str],
    metadata: tuple[tuple[str, str], ...],
) -> dict[tuple[str, str], LinkProfile]:
    """Every pair of agents' link, measured once (by the pair's first agent), one agent at
    a time so that no two probes share a link or the machine."""
    from planner.profiles import LinkProfile

    names = list(stubs)
    by_address = {addresses[n]: n for n in names}
    links: dict[tuple[str, str], LinkProfile] = {}
    for i, name in enumerate(names[:-1]):
        peers = [addresses[n] for n in names[i + 1 :]]
        request = agent_pb2.ProbeLinksRequest(
            peers=peers, payload_bytes=LINK_PAYLOAD_BYTES, repeats=LINK_REPEATS
        )
        reply = await stubs[name].ProbeLinks(request, metadata=metadata, timeout=120)
        for link in reply.links:
            links[(name, by_address[link.peer])] = LinkProfile(link.bandwidth_bps, link.latency_s)
    log.info(
        "measured links: %s",
        {
            f"{a}-{b}": f"{x.bandwidth_bps * 8 / 1e6:.0f} Mbit/s, {x.latency_s * 1e3:.2f} ms"
            for (a, b), x in links.items()
        },
    )
    return links


def network_of(links: dict[tuple[str, str], LinkProfile]) -> Network:
    """The measured pairs as the planner's network; any other pair is taken to be as slow
    as the slowest measured link."""
    from planner.profiles import LinkProfile, Network

    if not links:
        return Network(LinkProfile(125e6, 1e-4))
    slowest = LinkProfile(
        min(x.bandwidth_bps for x in links.values()), max(x.latency_s for x in links.values())
    )
    return Network(slowest, tuple((a, b, x) for (a, b), x in sorted(links.items())))


def micro_batch_tokens(
    spec: JobSpec, inputs: JobInputs, devices: int
) -> tuple[tuple[tuple[int, float], ...], tuple[tuple[int, int, float], ...]]:
    """Over the first ``TOKEN_SCALE_BATCHES`` of epoch 1's mini-batches, collated once: per
    micro-batch size the job can be cut into (a divisor of its batch, below it), the tokens
    epoch 1 computes relative to the padded mini-batches
    (:func:`pac.pipeline.micro_columns.token_scale`); and per micro-batch size (the batch
    included) and number of devices from 2 to ``devices``, what a one-stage group of that
    many computes (:func:`pac.pipeline.micro_columns.one_stage_token_scale`). Where the
    stage packs its rows (:func:`packs_rows`) one device is such a group too."""
    groups = batches(inputs.samples, spec.batch_size, shuffle=True, seed=spec.seed, epoch=1)
    pad = pad_id(inputs.loaded)
    collated = [collate(g, pad, task=inputs.task) for g in groups[:TOKEN_SCALE_BATCHES]]
    counts = [m for m in range(1, spec.batch_size + 1) if spec.batch_size % m == 0]
    tokens = tuple((spec.batch_size // m, token_scale(collated, m)) for m in counts if m > 1)
    packed = packs_rows(spec, inputs.loaded.family)
    one_stage = tuple(
        (spec.batch_size // m, n, one_stage_token_scale(collated, m, n, packed))
        for m in counts
        for n in range(1 if packed else 2, min(devices, spec.batch_size // m) + 1)
    )
    return tokens, one_stage


def planner_inputs(
    spec: JobSpec,
    profiles: dict[str, agent_pb2.DeviceProfile],
    timings: dict[str, BlockTiming],
    links: dict[tuple[str, str], LinkProfile],
    tokens: tuple[tuple[int, float], ...] = (),
    one_stage: tuple[tuple[int, int, float], ...] = (),
) -> tuple[Cluster, ModelProfile]:
    """The planner's view of the job: per-layer times scaled from each agent's measured
    block time by the layers' FLOPs (from the agent's matmul speed where it has none);
    ``tokens``, ``one_stage``: :func:`micro_batch_tokens`."""
    from planner.estimate import device_profile, model_profile, model_shape, read_config
    from planner.profiles import Cluster

    shape = model_shape(read_config(spec.model_dir), Path(spec.model_dir).name)
    seq = spec.max_length
    devices = []
    for name, profile in profiles.items():
        timing = timings.get(name)
        devices.append(
            device_profile(
                name,
                shape,
                seq,
                memory_bytes=int(profile.available_memory_bytes or profile.memory_bytes),
                gflops=max(profile.matmul_gflops, 1.0),
                layer_forward_s=timing.per_sample_s if timing else None,
                micro_batch_overhead_s=timing.overhead_s if timing else 0.0,
                side_layer_s=(timing.side_per_sample_s or None) if timing else None,
                backward_ratio=(
                    (spec.technique, timing.backward_ratio)
                    if timing and timing.backward_ratio
                    else None
                ),
                cpu_pool=pool_of(profile),
                pool_cores=profile.cpu_cores,
                threads=max(1, profile.threads),
            )
        )
    model = replace(
        model_profile(shape, seq), micro_batch_tokens=tokens, one_stage_tokens=one_stage
    )
    return Cluster(tuple(devices), network_of(links)), model


async def request_plan(
    spec: JobSpec, cluster: Cluster, model: ModelProfile, planner_address: str = ""
) -> Plan:
    """The plan for the job: from the Planner service at ``planner_address``, else from the
    library. A refusal or an unreachable planner is a :class:`PlanningError`."""
    micro_batches = spec.micro_batches if spec.micro_batches > 1 else None
    if not planner_address:
        from planner.api import plan
        from planner.errors import PlanInfeasible

        try:
            return await asyncio.to_thread(
                plan,
                cluster,
                model,
                technique=spec.technique,
                global_batch=spec.batch_size,
                micro_batches=micro_batches,
            )
        except (PlanInfeasible, ValueError) as error:
            raise PlanningError(f"the planner cannot place this job: {error}") from None
    from planner.convert import cluster_to_proto, model_to_proto, plan_from_proto
    from protos.v1 import planner_pb2, planner_pb2_grpc

    request = planner_pb2.PlanRequest(
        cluster=cluster_to_proto(cluster),
        model=model_to_proto(model),
        technique=spec.technique,
        global_batch=spec.batch_size,
        micro_batches=micro_batches or 0,
    )
    async with grpc.aio.insecure_channel(planner_address) as channel:
        try:
            reply = await planner_pb2_grpc.PlannerStub(channel).Plan(request, timeout=120)
        except grpc.aio.AioRpcError as error:
            raise PlanningError(
                f"the planner at {planner_address} answered {error.code().name}: {error.details()}"
            ) from None
    return plan_from_proto(reply.plan)


def layout_of(chosen: Plan) -> PipelineLayout:
    """The plan's stages, groups and shares as the agents' pipeline layout."""
    return PipelineLayout(
        stages=tuple(
            StageSpec(s.start, s.end, s.group.devices, tuple(float(x) for x in s.group.shares))
            for s in chosen.stages
        ),
        micro_batches=chosen.micro_batches,
    )


def plan_report(
    chosen: Plan,
    planner: str,
    timings: dict[str, BlockTiming],
    links: dict[tuple[str, str], LinkProfile],
    tokens: tuple[tuple[int, float], ...] = (),
    one_stage: tuple[tuple[int, int, float], ...] = (),
    packed: bool = False,
) -> str:
    """The plan as ``pac plan`` prints it, then what it was made from (``packed``: a
    stage of every block packs its rows)."""
    lines = [str(chosen), "", f"planned by {planner} from these measurements:"]
    for name, timing in timings.items():
        line = (
            f"  agent {name}: {timing.per_sample_s * 1e3:.3f} ms per sample per block, "
            f"{timing.overhead_s * 1e3:.3f} ms per micro-batch"
        )
        if timing.side_per_sample_s:
            line += (
                f", side block forward+backward {timing.side_per_sample_s * 1e3:.3f} ms per sample"
            )
        if timing.backward_ratio:
            line += f", backward {timing.backward_ratio:.2f}x forward"
        if timing.measured_by:
            line += f" (measured by {timing.measured_by}, which shares its CPU cores)"
        lines.append(line)
    for (a, b), link in links.items():
        lines.append(
            f"  link {a} - {b}: {link.bandwidth_bps * 8 / 1e6:.0f} Mbit/s, "
            f"{link.latency_s * 1e3:.3f} ms"
        )
    if tokens:
        sizes = ", ".join(f"{rows} rows {scale:.2f}" for rows, scale in tokens)
        lines.append(f"  tokens computed per micro-batch size, of the padded mini-batch's: {sizes}")
    if one_stage:
        most = max(n for _, n, _ in one_stage)
        sizes = ", ".join(f"{rows} rows {scale:.2f}" for rows, n, scale in one_stage if n == most)
        how = "packing its rows" if packed else "cutting its rows to their own longest"
        lines.append(f"  in one stage of {most} agents, each {how}: {sizes}")
    return "\n".join(lines) + "\n"
