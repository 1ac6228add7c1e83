"""An agent answers a repeated profile request from its memo, and measures again when the
request, the model files or the allowed age say so."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.profile_memo import ProfileAsk, ProfileMemo
from agent.profiling import LayerTiming, ProfileResult
from pac.families.base import FamilyError
from protos.v1 import agent_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Measure:
    """Counts its calls; each result is told apart by its embed_seconds."""

    def __init__(self) -> None:
        self.asks: list[ProfileAsk] = []

    def __call__(self, ask: ProfileAsk) -> ProfileResult:
        self.asks.append(ask)
        return ProfileResult(
            float(len(self.asks)),
            [LayerTiming(0, 0.5, 10, 20)],
            side_seconds=0.3,
            second_batch_seconds=(0.1,),
            side_second_batch_seconds=0.07,
        )


@pytest.fixture
def model(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"weights")
    return directory


def ask_for(model: Path, **changes: Any) -> ProfileAsk:
    return replace(ProfileAsk(model, 0, 0, 8, 64, 2, side_network=True), **changes)


def test_the_same_request_within_its_age_is_answered_from_the_memo(model: Path) -> None:
    clock, measure = Clock(), Measure()
    memo = ProfileMemo(clock)
    first, age = memo.profile(ask_for(model), 60.0, measure)
    assert (first.embed_seconds, age) == (1.0, 0.0)
    clock.now += 45
    again, age = memo.profile(ask_for(model), 60.0, measure)
    assert again is first and age == pytest.approx(45.0)
    assert len(measure.asks) == 1
    # max_age_s 0 asks for a fresh measurement, which then replaces the kept one
    fresh, age = memo.profile(ask_for(model), 0.0, measure)
    assert (fresh.embed_seconds, age) == (2.0, 0.0)
    assert memo.profile(ask_for(model), 60.0, measure)[0] is fresh


def test_too_old_another_request_or_changed_model_files_measure_again(model: Path) -> None:
    clock, measure = Clock(), Measure()
    memo = ProfileMemo(clock)
    memo.profile(ask_for(model), 60.0, measure)
    clock.now += 61
    assert memo.profile(ask_for(model), 60.0, measure)[1] == 0.0  # older than allowed
    assert len(measure.asks) == 2
    for other in (
        ask_for(model, batch_size=4),
        ask_for(model, packed_backbone=True),
        ask_for(model, pool_agents=3),  # measured beside another number of its pool's agents
    ):
        assert memo.profile(other, 60.0, measure)[1] == 0.0
    assert len(measure.asks) == 5
    clock.now += 5
    assert memo.profile(ask_for(model), 60.0, measure)[1] == pytest.approx(5.0)
    assert len(measure.asks) == 5  # the first request's newest profile is still good
    weights = model / "model.safetensors"
    weights.write_bytes(b"new weights")  # another size
    assert memo.profile(ask_for(model), 60.0, measure)[1] == 0.0
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same size
    assert memo.profile(ask_for(model), 60.0, measure)[1] == 0.0
    (model / "tokenizer.json").write_text("{}")  # a file added
    assert memo.profile(ask_for(model), 60.0, measure)[1] == 0.0
    assert len(measure.asks) == 8


def test_the_memo_keeps_the_newest_requests(model: Path) -> None:
    clock, measure = Clock(), Measure()
    memo = ProfileMemo(clock, size=2)
    for batch in (1, 2, 3):
        memo.profile(ask_for(model, batch_size=batch), 60.0, measure)
    memo.profile(ask_for(model, batch_size=3), 60.0, measure)
    memo.profile(ask_for(model, batch_size=2), 60.0, measure)
    assert len(measure.asks) == 3
    memo.profile(ask_for(model, batch_size=1), 60.0, measure)  # the oldest went
    assert len(measure.asks) == 4


def test_a_missing_model_directory_is_measured_and_so_refused(tmp_path: Path) -> None:
    def measure(ask: ProfileAsk) -> ProfileResult:
        raise FamilyError(f"{ask.model_dir} is not a model directory")

    with pytest.raises(FamilyError, match="not a model directory"):
        ProfileMemo().profile(ask_for(tmp_path / "gone"), 60.0, measure)


def test_an_agent_answers_a_repeated_profile_with_its_age(
    tiny_model_dir: Callable[[str], Path], start_agents: Any, agent_stub: Any, auth: Any
) -> None:
    model_dir = tiny_model_dir("bert")

    def request(max_age_s: float) -> agent_pb2.ProfileRequest:
        return agent_pb2.ProfileRequest(
            model_dir=str(model_dir), batch_size=2, seq_len=8, repeats=1, max_age_s=max_age_s
        )

    async def scenario() -> list[agent_pb2.ProfileReply]:
        async with start_agents(1) as [agent], agent_stub(agent.address) as stub:
            replies = [await stub.Profile(request(600), metadata=auth)]
            await asyncio.sleep(0.05)
            replies.append(await stub.Profile(request(600), metadata=auth))
            replies.append(await stub.Profile(request(0), metadata=auth))
            return replies

    measured, remembered, fresh = asyncio.run(scenario())
    assert measured.age_s == 0 and fresh.age_s == 0
    assert 0.05 <= remembered.age_s < 600
    assert list(remembered.layers) == list(measured.layers)  # the same numbers, not new ones
    assert remembered.device.name == "agent-0"


def test_a_memo_with_a_file_answers_for_the_next_process(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, measure = Clock(), Measure()
    path = tmp_path / "agent-cache" / "profiles.json"
    first, _ = ProfileMemo(clock, path=path).profile(ask_for(model), 60.0, measure)
    assert path.is_file()
    assert not caplog.records  # no file yet is no warning: a new agent starts empty
    clock.now += 30
    again, age = ProfileMemo(clock, path=path).profile(ask_for(model), 60.0, measure)
    assert age == pytest.approx(30.0)
    assert again == first and len(measure.asks) == 1
    # Another setting (the agent's threads, device or torch), changed files, a clock that
    # went back: measured again.
    memo = ProfileMemo(clock, path=path)
    assert memo.profile(ask_for(model, conditions="threads=4"), 60.0, measure)[1] == 0.0
    clock.now -= 3600
    assert ProfileMemo(clock, path=path).profile(ask_for(model), 7200.0, measure)[1] == 0.0
    clock.now += 3600
    (model / "model.safetensors").write_bytes(b"other weights")
    assert ProfileMemo(clock, path=path).profile(ask_for(model), 60.0, measure)[1] == 0.0
    assert len(measure.asks) == 4


def test_a_memo_file_from_before_the_side_networks_second_timing_still_answers(
    model: Path, tmp_path: Path
) -> None:
    clock, measure = Clock(), Measure()
    path = tmp_path / "profiles.json"
    ProfileMemo(clock, path=path).profile(ask_for(model), 60.0, measure)
    entries = json.loads(path.read_text())
    for entry in entries:
        del entry["result"]["side_second_batch_seconds"]
    path.write_text(json.dumps(entries))
    clock.now += 10
    kept, age = ProfileMemo(clock, path=path).profile(ask_for(model), 60.0, measure)
    # Answered from the file (not measured again), without the second timing: 0, which
    # the coordinator reads as "not measured".
    assert len(measure.asks) == 1
    assert (age, kept.side_seconds, kept.side_second_batch_seconds) == (10.0, 0.3, 0.0)


def test_an_unreadable_memo_file_starts_empty_and_an_unwritable_one_stays_in_memory(
    model: Path, tmp_path: Path
) -> None:
    clock, measure = Clock(), Measure()
    torn = tmp_path / "torn.json"
    torn.write_text('[{"ask": ')
    memo = ProfileMemo(clock, path=torn)
    assert memo.profile(ask_for(model), 60.0, measure)[1] == 0.0
    clock.now += 5
    assert ProfileMemo(clock, path=torn).profile(ask_for(model), 60.0, measure)[1] == 5.0
    assert len(measure.asks) == 1  # the torn file was replaced by a good one
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    memo = ProfileMemo(clock, path=blocked / "profiles.json")  # its folder is a file
    memo.profile(ask_for(model, batch_size=4), 60.0, measure)
    assert memo.profile(ask_for(model, batch_size=4), 60.0, measure)[1] == 0.0
    assert len(measure.asks) == 2  # answered from memory the second time


def test_a_restarted_agent_answers_from_the_profiles_it_kept(
    tiny_model_dir: Callable[[str], Path], start_agents: Any, agent_stub: Any, auth: Any
) -> None:
    request = agent_pb2.ProfileRequest(
        model_dir=str(tiny_model_dir("bert")), batch_size=2, seq_len=8, repeats=1, max_age_s=600
    )

    async def ask_once() -> agent_pb2.ProfileReply:
        async with start_agents(1) as [agent], agent_stub(agent.address) as stub:
            reply: agent_pb2.ProfileReply = await stub.Profile(request, metadata=auth)
            return reply

    measured = asyncio.run(ask_once())
    remembered = asyncio.run(ask_once())  # a new agent on the same cache directory
    assert measured.age_s == 0 and 0 < remembered.age_s < 600
    assert list(remembered.layers) == list(measured.layers)
