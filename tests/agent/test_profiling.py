"""Profiling a model's blocks on an agent (agent/profiling.py): a block built like one
already timed takes its time and runs once; a parallel-adapters job's blocks are timed on
prepacked weights, as its agents run them; the coordinator asks for what the job runs."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from agent import profiling
from agent.errors import BadRequest
from coordinator.drivers.mesh_plan import profile_agents
from coordinator.jobs import JobSpec
from pac.families import family_for_dir
from pac.families.bert import BertFamily
from pac.techniques import packed_backbone
from pac.techniques.parallel_adapters.ladder import ladder_points, run_ladder
from protos.v1 import agent_pb2


def _states(model_dir: Path) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """The loaded family and each block's input on a small batch."""
    family_class = family_for_dir(model_dir)
    family = family_class(family_class.load(model_dir))
    batch = profiling._random_batch(family, 2, 8, None)
    states = []
    with torch.no_grad():
        state = family.embed(batch)
        for block in family.blocks():
            states.append(state)
            state = family.run_block(block.index, state)
    return family, states


@pytest.fixture
def block_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The index of every BERT block run, in order."""
    calls: list[int] = []
    real = BertFamily.run_block

    def counted(self: BertFamily, index: int, state: dict[str, torch.Tensor]) -> Any:
        calls.append(index)
        return real(self, index, state)

    monkeypatch.setattr(BertFamily, "run_block", counted)
    return calls


def test_identical_blocks_run_once_and_share_the_first_ones_time(
    tiny_model_dir: Callable[[str], Path], block_runs: list[int]
) -> None:
    repeats = 3
    result = profiling.profile_layers(tiny_model_dir("bert"), 0, 0, 2, 8, repeats)
    # Block 0: a warm-up and 3 timed runs; block 1 (the same build) not at all: block 0's
    # output stands for its own.
    assert block_runs == [0] * (1 + repeats)
    first, second = result.layers
    assert second.forward_seconds == first.forward_seconds > 0
    assert second.parameter_bytes == first.parameter_bytes


def test_the_side_network_is_timed_on_the_outputs_the_block_timing_computed(
    tiny_model_dir: Callable[[str], Path], block_runs: list[int]
) -> None:
    result = profiling.profile_layers(tiny_model_dir("bert"), 0, 0, 2, 8, 3, side_network=True)
    assert result.side_seconds > 0
    assert block_runs == [0] * 4  # the blocks' timing alone: no second run for the ladder


@pytest.mark.parametrize("family_name", ["bert", "t5"])
def test_the_block_timing_collects_a_ladder_of_the_backbones_shapes(
    tiny_model_dir: Callable[[str], Path], family_name: str
) -> None:
    family_class = family_for_dir(tiny_model_dir(family_name))
    family = family_class(family_class.load(tiny_model_dir(family_name)))
    batch = profiling._random_batch(family, 2, 8, None)
    points = ladder_points(family, range(len(family.blocks())))
    collected: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        profiling._time_blocks(
            family, batch, 0, len(family.blocks()), 1, time.perf_counter, collected
        )
    expected = run_ladder(family, batch, points)
    assert sorted(collected) == sorted(expected)
    for point in points:
        assert collected[point].shape == expected[point].shape, point
    # The blocks that ran gave the backbone's own values: the embedding and block 0.
    for point in points[: 2 if family_name == "bert" else 3]:
        assert torch.equal(collected[point], expected[point]), point


def test_blocks_that_differ_in_weights_or_inputs_are_timed_each(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    # T5: each stack's first block holds the relative-position bias; decoder blocks have
    # cross-attention: all four blocks of the tiny model differ.
    family, states = _states(tiny_model_dir("t5"))
    signatures = [profiling.block_signature(family, i, s) for i, s in enumerate(states)]
    assert len(set(signatures)) == 4
    # The same block on a longer batch is another signature.
    longer = {k: torch.cat([v, v], dim=1) if v.dim() >= 2 else v for k, v in states[1].items()}
    assert profiling.block_signature(family, 1, longer) != signatures[1]


def test_layer_types_tell_alike_weights_apart(tiny_model_dir: Callable[[str], Path]) -> None:
    family, states = _states(tiny_model_dir("qwen2"))
    family.model.config.layer_types = ["full_attention", "full_attention"]
    same = [profiling.block_signature(family, i, s) for i, s in enumerate(states)]
    assert same[0] == same[1]
    family.model.config.layer_types = ["full_attention", "sliding_attention"]
    mixed = [profiling.block_signature(family, i, s) for i, s in enumerate(states)]
    assert mixed[0] != mixed[1]


def test_a_packed_profile_packs_only_the_blocks_it_times_and_refuses_a_backward(
    tiny_model_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    packed: list[tuple[int, ...] | None] = []
    real = packed_backbone.pack_block_linears

    def spy(family: Any, only: tuple[int, ...] | None = None) -> int:
        packed.append(only)
        return real(family, only)

    monkeypatch.setattr(profiling, "pack_block_linears", spy)
    monkeypatch.setattr(packed_backbone, "pack_block_linears", spy)
    model_dir = tiny_model_dir("bert")
    result = profiling.profile_layers(
        model_dir, 0, 0, 2, 8, 1, side_network=True, second_batch_size=1, packed_backbone=True
    )
    assert len(result.layers) == 2 and all(t.forward_seconds > 0 for t in result.layers)
    # Block 1 is a copy of block 0: only block 0 is packed and timed, at both batch sizes
    # (the packed block 0 still counts as block 1's like). The side network packs nothing.
    assert packed == [(0,)]
    assert result.layers[1].forward_seconds == result.layers[0].forward_seconds
    assert result.second_batch_seconds[1] == result.second_batch_seconds[0] > 0
    with pytest.raises(BadRequest, match="no backward"):
        profiling.profile_layers(
            model_dir, 0, 0, 2, 8, 1, packed_backbone=True, backward_technique="lora"
        )


def test_packing_one_block_packs_its_linears_and_leaves_the_others(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    if not packed_backbone.packing_supported(torch.float32, torch.device("cpu")):
        pytest.skip("this PyTorch build has no oneDNN prepacked linear")
    family, states = _states(tiny_model_dir("bert"))
    family.model.requires_grad_(False)
    packing = profiling.Packing(family)
    before = [profiling.block_signature(family, i, s) for i, s in enumerate(states)]
    packing.prepare(0)
    kinds = [
        {type(m).__name__ for m in b.module.modules()} & {"Linear", "PackedLinear"}
        for b in family.blocks()
    ]
    assert kinds == [{"PackedLinear"}, {"Linear"}]
    # The plain signature now tells them apart; the packing's, taken before, does not.
    assert profiling.block_signature(family, 0, states[0]) != before[0]
    assert packing.signature(0, states[0]) == packing.signature(1, states[1])
    assert packed_backbone.pack_block_linears(family, only=(0,)) == 0  # packed already


def test_the_side_network_is_timed_at_both_batch_sizes_when_both_are_asked_for(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    model_dir = tiny_model_dir("bert")
    both = profiling.profile_layers(
        model_dir, 0, 0, 4, 8, 1, side_network=True, second_batch_size=1
    )
    assert both.side_seconds > 0 and both.side_second_batch_seconds > 0
    one = profiling.profile_layers(model_dir, 0, 0, 4, 8, 1, side_network=True)
    assert one.side_seconds > 0 and one.side_second_batch_seconds == 0
    none = profiling.profile_layers(model_dir, 0, 0, 4, 8, 1, second_batch_size=1)
    assert none.side_seconds == 0 and none.side_second_batch_seconds == 0


def test_a_second_batchs_ladder_is_cut_or_repeated_from_the_first() -> None:
    ladder = torch.arange(12.0).reshape(3, 2, 2)
    assert torch.equal(profiling._rows(ladder, 1), ladder[:1])
    seven = profiling._rows(ladder, 7)
    assert seven.shape == (7, 2, 2)
    assert torch.equal(seven[3:6], ladder) and torch.equal(seven[6], ladder[0])


def test_the_coordinator_splits_the_side_networks_time_into_fixed_and_per_sample() -> None:
    from coordinator.drivers.mesh_plan import side_timing

    # 24 blocks; 0.42 s at one sample, 2.1 s at eight: 0.24 s per sample, 0.18 s fixed.
    per_block, fixed = side_timing(8, 2.1, 0.42, 24)
    assert per_block == pytest.approx(0.24 / 24)
    assert fixed == pytest.approx(0.18)
    # Measured at one size only (a profile from before): all of it per sample.
    assert side_timing(8, 2.1, 0.0, 24) == (pytest.approx(2.1 / 8 / 24), 0.0)
    assert side_timing(8, 0.0, 0.0, 24) == (0.0, 0.0)


class _RecordingStub:
    """An agent stub that records the Profile request and answers two blocks' timings."""

    def __init__(self) -> None:
        self.requests: list[agent_pb2.ProfileRequest] = []

    async def Profile(
        self, request: agent_pb2.ProfileRequest, metadata: Any = None
    ) -> agent_pb2.ProfileReply:
        self.requests.append(request)
        return agent_pb2.ProfileReply(
            layers=[agent_pb2.LayerProfile(index=i, forward_seconds=0.02) for i in range(2)],
            second_batch_seconds=[0.004, 0.004],
            side_seconds=0.01,
            side_second_batch_seconds=0.003,
        )


@pytest.mark.parametrize(
    ("technique", "settings", "packed"),
    [
        ("parallel-adapters", {}, True),
        ("parallel-adapters", {"packed_backbone": False}, False),
        ("lora", {}, False),
    ],
)
def test_the_coordinator_asks_for_the_blocks_as_the_job_runs_them(
    technique: str, settings: dict[str, Any], packed: bool
) -> None:
    stub = _RecordingStub()
    spec = JobSpec(
        model_dir="/models/m", data_path="d.jsonl", task="classification",
        technique=technique, technique_settings=settings,
    )
    timings = asyncio.run(profile_agents({"a": stub}, spec, ()))  # type: ignore[dict-item]
    (request,) = stub.requests
    assert request.packed_backbone is packed
    assert request.side_network is (technique == "parallel-adapters")
    assert timings["a"].per_sample_s > 0
    # The blocks' fixed cost (2 x (0.004 - 0.016 / 7 per sample) = 3.43 ms) and the side
    # network's (3 ms - 1 ms per sample = 2 ms): the fixed cost of a micro-batch.
    per_sample = (0.02 - 0.004) / (8 - 1)
    assert timings["a"].overhead_s == pytest.approx(2 * (0.004 - per_sample) + 0.002)


def test_one_agent_of_a_cpu_pool_measures_for_the_others_and_the_planner_sees_the_pool(
) -> None:
    from coordinator.drivers.mesh_plan import planner_inputs
    from coordinator.drivers.profile_pools import pool_of

    box = "box:cpus=0-1"
    stubs = {name: _RecordingStub() for name in ("a", "b", "c", "d", "e", "laptop", "gpu")}
    profiles = {
        name: agent_pb2.DeviceProfile(
            name=name, cpu_pool=pool, cpu_cores=2, threads=threads, accelerator=accelerator,
            memory_bytes=1 << 32, matmul_gflops=10.0,
        )
        for name, pool, threads, accelerator in (
            ("a", box, 1, "cpu"), ("b", box, 1, "cpu"), ("c", box, 1, "cpu"),
            ("d", box, 2, "cpu"), ("e", box, 2, "cpu"),
            ("laptop", "laptop:cpus=0-1", 1, "cpu"), ("gpu", box, 1, "cuda"),
        )
    }
    assert pool_of(profiles["gpu"]) == ""  # it computes on its GPU, not on the shared cores
    spec = JobSpec(model_dir="/models/m", data_path="d.jsonl", task="classification")
    timings = asyncio.run(profile_agents(stubs, spec, (), profiles=profiles))  # type: ignore[arg-type]
    # One agent per thread count of the box measures (a and d, at once); the others do not.
    told = {name: [r.pool_agents for r in stub.requests] for name, stub in stubs.items()}
    assert told == {"a": [2], "b": [], "c": [], "d": [2], "e": [], "laptop": [1], "gpu": [0]}
    # a and d measured on the 2 cores with 1 and 2 threads: a had 2/3 of a core, d 4/3.
    # With all 5 busy (7 threads) a one-thread agent has 2/7 of a core, a two-thread 4/7:
    # their times are (2/3) / (2/7) = (4/3) / (4/7) = 7/3 of what was measured.
    alone = timings["laptop"]
    for name in "abcde":
        assert timings[name].per_sample_s == pytest.approx(alone.per_sample_s * 7 / 3)
        assert timings[name].side_per_sample_s == pytest.approx(alone.side_per_sample_s * 7 / 3)
    assert [timings[n].measured_by for n in "abcde"] == ["", "a", "a", "", "d"]
    assert timings["gpu"] == alone
    config = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 64,
              "intermediate_size": 128, "num_attention_heads": 2, "vocab_size": 100}
    with tempfile.TemporaryDirectory() as model_dir:
        (Path(model_dir) / "config.json").write_text(json.dumps(config))
        spec = JobSpec(model_dir=model_dir, data_path="d.jsonl", task="classification")
        cluster, _ = planner_inputs(spec, profiles, timings, {})
    assert [(d.name, d.cpu_pool, d.pool_cores, d.threads) for d in cluster.devices] == [
        ("a", box, 2, 1), ("b", box, 2, 1), ("c", box, 2, 1), ("d", box, 2, 2),
        ("e", box, 2, 2), ("laptop", "laptop:cpus=0-1", 2, 1), ("gpu", "", 2, 1),
    ]
