"""The agent's malloc settings (agent/allocator.py): accepted by glibc, no-ops elsewhere."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from agent import allocator


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
    reason="glibc's mallopt",
)
def test_the_allocator_settings_are_accepted_by_glibc() -> None:
    assert allocator.one_arena()
    assert allocator.cache_phase_threshold()
    assert allocator.backbone_threshold()  # and back, for a job with a backbone


def test_elsewhere_the_settings_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not allocator.one_arena()
    assert not allocator.cache_phase_threshold()
