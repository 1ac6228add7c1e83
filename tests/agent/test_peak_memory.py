"""The agent's memory figures: idle floor, peak since the start, peak of the cache phase."""

from __future__ import annotations

import sys

import pytest
import torch
from prometheus_client import generate_latest

from agent.metrics import AgentMetrics
from agent.peak_memory import CACHE_PHASE, START, PeakMemory, reset_peak
from pac.engine.memory import peak_rss_bytes, rss_bytes

MiB = 1 << 20


def _touch(nbytes: int) -> torch.Tensor:
    """``nbytes`` of resident memory (written, so the pages are really there)."""
    return torch.ones(nbytes // 4, dtype=torch.float32)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs")
def test_the_cache_phase_peak_starts_at_its_mark_and_the_overall_peak_keeps_the_past() -> None:
    assert reset_peak()  # this kernel can reset the mark (before anything is measured)
    memory = PeakMemory()
    assert memory.peak(CACHE_PHASE) == 0  # not marked yet
    big = _touch(96 * MiB)
    past_peak = peak_rss_bytes()
    del big
    assert rss_bytes() < past_peak - 64 * MiB  # given back: only the mark remembers it
    memory.mark(CACHE_PHASE)
    # The reset does not lose the past (the kernel's RSS counters are approximate, to a
    # few pages: a MiB of slack).
    assert memory.peak(START) >= past_peak - MiB
    assert memory.peak(CACHE_PHASE) < past_peak - 64 * MiB
    before = memory.peak(CACHE_PHASE)
    again = _touch(48 * MiB)
    assert memory.peak(CACHE_PHASE) >= before + 40 * MiB
    assert memory.peak(START) >= past_peak - MiB
    del again


def test_idle_and_peaks_are_on_the_metrics_page() -> None:
    metrics = AgentMetrics()
    assert metrics.memory.note_idle() > 0
    metrics.memory.mark(CACHE_PHASE)
    text = generate_latest(metrics.registry).decode()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(("pac_agent_idle_rss_bytes", "pac_agent_peak_rss_bytes"))
    }
    assert values["pac_agent_idle_rss_bytes"] == metrics.memory.idle_bytes
    start = values['pac_agent_peak_rss_bytes{since="start"}']
    phase = values['pac_agent_peak_rss_bytes{since="cache_phase"}']
    assert 0 < phase <= start
    assert start >= metrics.memory.idle_bytes
