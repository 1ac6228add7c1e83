"""Micro-batches cut to their own longest sample pad less: the cost model scales a
micro-batch's per-sample cost by the job's token scale at its size, and the plan moves."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner import Technique, plan
from planner.api import micro_batch_counts
from planner.brute import brute_force
from planner.convert import model_from_proto, model_to_proto
from planner.costs import CostModel
from planner.profiles import Cluster
from planner.synthetic import device, synthetic_model

MODEL = synthetic_model(8, hidden=256, seq=32)
PA = Technique.PARALLEL_ADAPTERS
# What the local mesh's sentences measure (pac.pipeline.micro_columns.token_scale) at a
# batch of 8: smaller micro-batches compute fewer padding tokens.
TOKENS = ((4, 0.75), (2, 0.62), (1, 0.55))


def test_a_micro_batch_costs_its_token_scale_of_a_padded_one() -> None:
    solo = Cluster((device("solo", 8, 1e-3, 1 << 30),))
    plain = CostModel(solo, MODEL, PA)
    scaled = CostModel(solo, replace(MODEL, micro_batch_tokens=TOKENS), PA)
    for rows, scale in (*TOKENS, (8, 1.0), (3, 1.0)):  # sizes not listed: the padded cost
        base = plain.stage((0,), 0, 8, rows, 1)
        got = scaled.stage((0,), 0, 8, rows, 1)
        assert got.time_s == pytest.approx(scale * base.time_s, rel=1e-12)
        assert got.memory_bytes == base.memory_bytes  # memory: at the padding, a bound


def test_less_padding_in_smaller_micro_batches_moves_the_plan_and_it_stays_exact() -> None:
    # A fixed cost per micro-batch makes one micro-batch best when every size pads alike.
    solo = Cluster((device("solo", 8, 1e-3, 1 << 30, overhead_s=0.01),))
    chosen = []
    for model in (MODEL, replace(MODEL, micro_batch_tokens=TOKENS)):
        got = plan(solo, model, PA, 8)
        exact = brute_force(CostModel(solo, model, PA), 8, micro_batch_counts(8, None))
        assert exact is not None
        assert got.step_time_s == pytest.approx(exact[1], rel=1e-9)
        chosen.append(got.micro_batches)
    assert chosen[0] == 1 and chosen[1] > 1


def test_the_scales_travel_to_the_planner_service_and_bad_ones_are_refused() -> None:
    model = replace(MODEL, micro_batch_tokens=TOKENS)
    back = model_from_proto(model_to_proto(model))
    assert back == model and back.token_scale(2) == 0.62 and back.token_scale(8) == 1.0
    for bad in (((0, 0.5),), ((2, 0.0),), ((2, 1.5),)):
        with pytest.raises(ValueError, match="scale"):
            replace(MODEL, micro_batch_tokens=bad)


def test_a_one_stage_group_costs_its_own_scale_and_other_stages_the_micro_batchs() -> None:
    pair = Cluster((device("a", 8, 1e-3, 1 << 30), device("b", 8, 1e-3, 1 << 30)))
    one_stage = ((4, 2, 0.6), (8, 2, 0.8))
    plain = CostModel(pair, replace(MODEL, micro_batch_tokens=TOKENS), PA)
    cut = CostModel(pair, replace(MODEL, micro_batch_tokens=TOKENS, one_stage_tokens=one_stage), PA)
    # Both devices over every layer: the group's own scale, against the micro-batch's.
    for rows, scale in ((4, 0.6), (8, 0.8)):
        base = plain.stage((0, 1), 0, 8, rows, 1)
        got = cut.stage((0, 1), 0, 8, rows, 1)
        assert got.time_s == pytest.approx(base.time_s * scale / dict(TOKENS).get(rows, 1.0))
        assert got.shares == base.shares
    # A stage of some layers, or a pair not listed: as before.
    assert cut.stage((0, 1), 0, 4, 4, 1) == plain.stage((0, 1), 0, 4, 4, 1)
    assert cut.stage((0,), 0, 8, 4, 1) == plain.stage((0,), 0, 8, 4, 1)
    assert cut.stage((0, 1), 0, 8, 2, 1) == plain.stage((0, 1), 0, 8, 2, 1)
    model = replace(MODEL, micro_batch_tokens=TOKENS, one_stage_tokens=one_stage)
    back = model_from_proto(model_to_proto(model))
    assert back == model and back.one_stage_scale(4, 2) == 0.6
    assert back.one_stage_scale(2, 2) == 0.62  # not listed: the micro-batch's scale
    for bad in (((0, 2, 0.5),), ((2, 0, 0.5),), ((2, 2, 1.5),)):
        with pytest.raises(ValueError, match="scale"):
            replace(MODEL, one_stage_tokens=bad)
