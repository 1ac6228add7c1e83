"""The coordinator's side of redistribution: whose samples are whose in the cache phase,
and how many bytes the planner's cost model says will move (printed beside the bytes the
agents report)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from coordinator.drivers.mesh_job import JobData, packs_rows
from pac.cache.precision import get_codec
from pac.data.encoding import EncodedSample
from pac.pipeline.balance import balanced_slots
from pac.pipeline.batch_part import MASKS, BatchPart
from pac.pipeline.layout import PipelineLayout
from pac.pipeline.ownership import epoch_holdings, owners_by_holdings
from pac.pipeline.routing import split_counts
from pac.techniques.parallel_adapters import ParallelAdaptersModel
from pac.techniques.parallel_adapters.ladder import point_mask_key
from protos.v1 import agent_pb2

if TYPE_CHECKING:
    from planner.plan import Plan

# Where a stage packs its rows: a row's tokens in its epoch-1 micro-batch against its work
# in the later steps it joins (pac.pipeline.balance). On sentence-like lengths, one
# micro-batch of 32 rows on 4 devices, 3 or 10 epochs (tests/pipeline/test_balance.py),
# 1-3 leave epoch 1's busiest device at 1.02-1.07 times the mean (1.12-1.21 at 0) and the
# cache phase's at 1.08-1.20 (1.10-1.17 at 0); the total moves little between them.
EPOCH_ONE_WEIGHT = 2.0


def cache_shares(
    plan: Plan | None, layout: PipelineLayout, profiles: dict[str, agent_pb2.DeviceProfile]
) -> list[tuple[str, int]]:
    """Each device's weight in the cache phase: the plan's cache shares (from the measured
    side-network speeds), or for a fixed layout the devices' matmul speed."""
    if plan is not None and plan.cache_shares:
        planned = dict(plan.cache_shares)
        return [(d, max(1, int(planned.get(d, 0)))) for d in layout.devices]
    return [(d, max(1, round(100 * profiles[d].matmul_gflops))) for d in layout.devices]


def assign_owners(
    run: JobData,
    layout: PipelineLayout,
    epoch_one: Sequence[Sequence[EncodedSample]],
    shares: Sequence[tuple[str, int]],
    slots: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Every sample's owner: shares by weight, each device preferring what it cached.

    What a device cached follows from the rows it computed: each mini-batch's in the
    order epoch 1 computed them (longest first, then by ``slots`` inside each micro-batch:
    :meth:`BatchPart.by_micro_batch`)."""
    batches = [computed_order(run, layout, group, slots) for group in epoch_one]
    fingerprints = list(dict.fromkeys(f for group in batches for f in group))
    held = epoch_holdings(layout, batches)
    return owners_by_holdings(
        fingerprints, [d for d, _ in shares], [float(w) for _, w in shares], held
    )


def computed_order(
    run: JobData,
    layout: PipelineLayout,
    group: Sequence[EncodedSample],
    slots: Mapping[str, int] | None = None,
) -> list[str]:
    """The fingerprints of mini-batch ``group`` in the order epoch 1's pipeline computes
    its rows (as the coordinator's steps send them)."""
    whole = BatchPart.whole(run.collate(list(group)), [s.fingerprint for s in group], 0)
    ordered = whole.by_micro_batch(layout.micro_batches, slots).sample_ids
    assert ordered is not None
    return list(ordered)


def epoch_one_slots(
    run: JobData, layout: PipelineLayout, shares: Sequence[tuple[str, int]]
) -> dict[str, int]:
    """Which device of a one-stage layout computes which row of epoch 1, so that the cache
    phase's steps are even (:func:`pac.pipeline.balance.balanced_slots`; ``shares``: the
    cache phase's weights). Empty where there is nothing to balance: several stages (a
    sample's cache is then spread over them), one device, or one epoch."""
    if len(layout.stages) != 1 or len(layout.stages[0].devices) < 2 or run.spec.epochs < 2:
        return {}
    stage = layout.stages[0]
    ordered: list[list[str]] = []
    tokens: dict[str, float] = {}
    for group in run.batches(1):
        whole = BatchPart.whole(run.collate(list(group)), [s.fingerprint for s in group], 0)
        real = sum(
            (whole.tensors[key].sum(dim=1) for key in MASKS if key in whole.tensors),
            torch.zeros(whole.size),
        )
        tokens.update(zip((s.fingerprint for s in group), real.tolist(), strict=True))
        cut = whole.by_micro_batch(layout.micro_batches).sample_ids
        assert cut is not None
        ordered.append(list(cut))
    later = [
        [[s.fingerprint for s in group] for group in run.batches(epoch)]
        for epoch in range(2, run.spec.epochs + 1)
    ]
    weight = dict(shares)
    speeds = [float(weight.get(device, 1)) for device in stage.devices]
    first = EPOCH_ONE_WEIGHT if packs_rows(run.spec, run.loaded.family) else 0.0
    return balanced_slots(ordered, layout.micro_batches, stage.shares, later, tokens, speeds, first)


def layer_cache_bytes(
    run: JobData, batches: Sequence[Sequence[EncodedSample]], precision: str
) -> list[int]:
    """Per backbone block, the mean cache bytes of one sample: the ladder points the block's
    stage stores (an embedding's points count with block 0), each at its sequence's mean
    real length (from the collated batches' masks), at the cache precision. The planner's
    ``cache_bytes_per_layer``."""
    model = run.model()
    if not isinstance(model, ParallelAdaptersModel):
        raise ValueError("only a parallel-adapters job has a cache to redistribute")
    family = run.loaded.family
    tokens: dict[str, float] = {}
    count = 0
    for group in batches:
        batch = run.collate(list(group))
        count += len(group)
        for key in ("attention_mask", "decoder_attention_mask"):
            if key in batch:
                tokens[key] = tokens.get(key, 0.0) + float(batch[key].sum())
    codec = get_codec(precision)
    per_layer = [0.0] * len(family.blocks())
    width = family.hidden_size  # every ladder point is a backbone hidden state
    for point in model.points:
        block = int(point.split(".", 1)[1]) if point.startswith("layer.") else 0
        mean = tokens.get(point_mask_key(family, point), 0.0) / max(1, count)
        per_layer[block] += mean * codec.bytes_per_token(width)
    return [round(x) for x in per_layer]


def predicted_bytes(
    layout: PipelineLayout,
    global_batch: int,
    shares: Sequence[tuple[str, int]],
    per_layer: Sequence[int],
    samples: int,
) -> int:
    """The planner's estimate of the bytes redistribution moves for this layout."""
    from planner.cache_phase import redistribution
    from planner.plan import DeviceGroup, Stage

    micro = global_batch // layout.micro_batches
    stages = [
        Stage(
            index,
            spec.begin,
            spec.end,
            DeviceGroup(tuple(spec.devices), tuple(split_counts(micro, spec.shares))),
            0.0,
            0.0,
        )
        for index, spec in enumerate(layout.stages)
    ]
    estimate = redistribution(
        stages, global_batch, layout.micro_batches, list(shares), per_layer, samples
    )
    return estimate.bytes_moved
