"""The clock a profile is timed by: wall time, or CPU seconds over a quota's cores."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path

from agent import profiling
from agent.profile_clock import clock_name, profile_clock
from pac.cluster.cpu_quota import OwnQuota


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_without_a_quota_or_on_several_threads_the_profile_is_timed_by_the_wall() -> None:
    half = OwnQuota("/pac-mesh/a", 0.5)
    assert profile_clock(None, 1) is time.perf_counter
    assert profile_clock(half, 2) is time.perf_counter
    assert profile_clock(OwnQuota("/pac-mesh/a", math.inf), 1) is time.perf_counter
    assert clock_name(None, 1) == clock_name(half, 2) == "wall"
    assert clock_name(half, 1) == "cpu/0.5"
    assert clock_name(OwnQuota("/pac-mesh/a", 3.0), 1) == "cpu/1"  # one thread, one core


def test_under_a_quota_the_clock_counts_the_threads_cpu_over_its_share() -> None:
    clock = profile_clock(OwnQuota("/pac-mesh/a", 0.5), 1)
    started, cpu = clock(), time.thread_time()
    time.sleep(0.2)  # time others would take: not the work's
    _busy(0.05)
    measured, used = clock() - started, time.thread_time() - cpu
    assert used >= 0.05
    assert abs(measured - used / 0.5) < 0.01
    assert measured < 0.2  # the sleep did not count
    whole = profile_clock(OwnQuota("/pac-mesh/a", 2.0), 1)
    started = whole()
    _busy(0.02)
    assert 0.02 <= whole() - started < 0.2  # a thread computes on one core at most


def test_every_timing_of_a_profile_reads_the_clock_it_is_given(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    ticks = itertools.count()

    def clock() -> float:  # one second per reading: every timed run takes one second
        return float(next(ticks))

    result = profiling.profile_layers(
        tiny_model_dir("bert"), 0, 0, 2, 8, 1, side_network=True, second_batch_size=1, clock=clock
    )
    assert result.embed_seconds == 1.0
    assert [t.forward_seconds for t in result.layers] == [1.0] * len(result.layers)
    assert result.second_batch_seconds == (1.0,) * len(result.layers)
    blocks = len(result.layers)
    laddered = len(range(blocks - 1, -1, -profiling.SIDE_EVERY))  # (scaled to all blocks)
    assert result.side_seconds == result.side_second_batch_seconds == blocks / laddered
    # Each timed run later than the one before takes longer (readings 0, 1, 4, 9, ...): a
    # block's backward, timed after its forward, leaves more than nothing only by this clock.
    squares = (float(i * i) for i in itertools.count())
    backward = profiling.profile_layers(
        tiny_model_dir("bert"), 0, 0, 2, 8, 1, backward_technique="lora",
        clock=lambda: next(squares),
    )  # fmt: skip
    assert all(seconds > 0 for seconds in backward.backward_seconds)
