"""Fixtures of the operations tests: reading /metrics, needing root."""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Callable

import pytest

MetricReader = Callable[[str, str, str], float]


@pytest.fixture
def needs_root() -> None:
    """Network namespaces and cgroups need root (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces and cgroups need root; CI runs these as root")


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def read_metric() -> MetricReader:
    """``read_metric("http://h:9101/metrics", "pac_x_total", 'peer="a"')`` -> its value."""

    def read(url: str, metric: str, labels: str = "") -> float:
        text = _scrape(url)
        pattern = "^" + re.escape(metric) + (r"\{" + re.escape(labels) + r"\}" if labels
                                             else "")
        match = re.search(pattern + r" (\S+)$", text, re.MULTILINE)
        assert match, f"{metric}{{{labels}}} is not in {url}"
        return float(match.group(1))

    return read
