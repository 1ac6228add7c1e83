"""An agent names the CPU cores it computes on, so that the planner knows who shares them."""

from __future__ import annotations

import os
import socket

import pytest

from agent.device import cpu_pool, usable_cpus


def test_the_pool_names_the_machine_and_its_cores() -> None:
    assert cpu_pool([0, 1, 2, 5, 7, 8]) == f"{socket.gethostname()}:cpus=0-2,5,7-8"
    assert cpu_pool([3]) == f"{socket.gethostname()}:cpus=3"


def test_the_usable_cores_are_the_affinity() -> None:
    assert usable_cpus() == sorted(os.sched_getaffinity(0))


def test_cpus_are_read_as_cores_and_ranges() -> None:
    from agent.device import parse_cpus

    assert parse_cpus("0-2,5") == [0, 1, 2, 5]
    assert parse_cpus("3, 1") == [1, 3]
    for bad in ("a", "2-1", "-1", "1-x", ""):
        with pytest.raises(ValueError, match="core"):
            parse_cpus(bad)
