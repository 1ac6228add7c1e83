"""The coordinator deals epoch 1's rows of a one-stage layout so that the cache phase's
steps are even, and the cache's owners are then exactly the devices that computed it:
redistribution moves nothing for it."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from coordinator.drivers.mesh_job import JobData
from coordinator.drivers.mesh_redistribution import (
    assign_owners,
    computed_order,
    epoch_one_slots,
)
from coordinator.jobs import JobSpec
from pac.pipeline.balance import step_loads
from pac.pipeline.batch_part import pipeline_positions
from pac.pipeline.layout import PipelineLayout, StageSpec
from tests.coordinator.conftest import NEGATIVE, POSITIVE

DEVICES = ("agent-0", "agent-1")


def _load(spec: JobSpec, layout: PipelineLayout) -> JobData:
    return JobData.load(spec, layout, {d: "127.0.0.1:1" for d in layout.devices})


def _sentences(path: Path, count: int = 40) -> Path:
    """Distinct sentences of many lengths (equal ones would share a cache entry), in the
    tiny tokenizer's words."""
    rows = [
        {
            "text": " ".join([f"the film was {cue}"] + ["today"] * repeats),
            "label": label,
        }
        for repeats in range(count // 8)
        for label, cues in (("pos", POSITIVE), ("neg", NEGATIVE))
        for cue in cues
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_one_stage_owners_are_the_devices_that_computed_and_steps_are_even(
    spec: JobSpec, tmp_path: Path
) -> None:
    data = str(_sentences(tmp_path / "sentences.jsonl"))
    job = replace(spec, data_path=data, eval_path=data, epochs=4, batch_size=8, micro_batches=2)
    layout = PipelineLayout((StageSpec(0, 2, DEVICES, (1.0, 1.0)),), micro_batches=2)
    run = _load(job, layout)
    shares = [(d, 1) for d in DEVICES]
    slots = epoch_one_slots(run, layout, shares)
    assert set(slots) == {s.fingerprint for s in run.samples}
    owners = assign_owners(run, layout, run.batches(1), shares, slots)
    for group in run.batches(1):  # each sample's owner is the device that computed its row
        order = computed_order(run, layout, group, slots)
        for rank, device in enumerate(DEVICES):
            for position in pipeline_positions(layout, device, len(order)):
                assert owners[order[position]] == device
                assert slots[order[position]] == rank
    # Later steps are more even than with rows dealt by position.
    tokens = {s.fingerprint: float(len(s.input_ids)) for s in run.samples}
    plain = assign_owners(run, layout, run.batches(1), shares)

    def imbalance(owned: dict[str, str]) -> float:
        ratios = []
        for epoch in range(2, job.epochs + 1):
            groups = [[s.fingerprint for s in g] for g in run.batches(epoch)]
            for load in step_loads(groups, owned, tokens):
                work = [load.get(d, 0.0) for d in DEVICES]
                ratios.append(max(work) / statistics.mean(work))
        return statistics.mean(ratios)

    assert imbalance(owners) < imbalance(plain), (imbalance(owners), imbalance(plain))


def test_nothing_is_dealt_where_a_sample_spans_stages_or_there_is_one_epoch(
    spec: JobSpec,
) -> None:
    two_stages = PipelineLayout(
        (StageSpec(0, 1, ("agent-0",), (1.0,)), StageSpec(1, 2, ("agent-1",), (1.0,))),
        micro_batches=2,
    )
    shares = [(d, 1) for d in DEVICES]
    assert epoch_one_slots(_load(spec, two_stages), two_stages, shares) == {}
    one_stage = PipelineLayout((StageSpec(0, 2, DEVICES, (1.0, 1.0)),), micro_batches=2)
    assert epoch_one_slots(_load(replace(spec, epochs=1), one_stage), one_stage, shares) == {}
    lone = PipelineLayout((StageSpec(0, 2, ("agent-0",), (1.0,)),), micro_batches=2)
    assert epoch_one_slots(_load(spec, lone), lone, [("agent-0", 1)]) == {}


def test_packed_rows_are_dealt_for_an_even_epoch_one_too(spec: JobSpec, tmp_path: Path) -> None:
    """One micro-batch on a stage that packs its rows: a device's epoch-1 work is its
    rows' tokens, and the deal evens it out (the ``pack_rows: false`` setting deals for
    the cache phase alone)."""
    rows = [  # lengths from 6 to 25 tokens
        {"text": " ".join([f"the film was {cue}"] + ["today"] * repeats), "label": label}
        for repeats in range(20)
        for label, cue in (("pos", "good"), ("neg", "bad"))
    ]
    path = tmp_path / "sentences.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    job = replace(
        spec,
        data_path=str(path),
        eval_path=str(path),
        epochs=3,
        batch_size=8,
        micro_batches=1,
        max_length=32,
    )
    devices = ("agent-0", "agent-1", "agent-2", "agent-3")
    layout = PipelineLayout((StageSpec(0, 2, devices, (2.0,) * 4),), micro_batches=1)
    shares = [(d, 1) for d in devices]

    def epoch_one_imbalance(settings: dict[str, object]) -> float:
        run = _load(replace(job, technique_settings=settings), layout)
        slots = epoch_one_slots(run, layout, shares)
        tokens = {s.fingerprint: float(len(s.input_ids)) for s in run.samples}
        ratios = []
        for group in run.batches(1):
            work = [0.0] * len(devices)
            for sample in group:
                work[slots[sample.fingerprint]] += tokens[sample.fingerprint]
            dealt = [slots[s.fingerprint] for s in group]
            assert [dealt.count(k) for k in range(len(devices))] == [2, 2, 2, 2]
            ratios.append(max(work) / statistics.mean(work))
        return statistics.mean(ratios)

    packed, padded = epoch_one_imbalance({}), epoch_one_imbalance({"pack_rows": False})
    # (1.11 against 1.36: two rows per device leave little to even out)
    assert packed < 1.15 and packed < 0.9 * padded, (packed, padded)
