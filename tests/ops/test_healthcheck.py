"""docker/healthcheck.py (the compose healthchecks) asks grpc.health.v1 and exits 0 only
for SERVING."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
RUNNER = ("import argparse, importlib, sys; m = importlib.import_module(sys.argv[1]); "
          "p = argparse.ArgumentParser(); m.add_arguments(p); "
          "sys.exit(m.run(p.parse_args(sys.argv[2:])))")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True,
                          text=True, timeout=30)


def test_serving_planner_is_healthy_and_a_dead_one_is_not() -> None:
    address = f"127.0.0.1:{free_port()}"
    planner = subprocess.Popen([sys.executable, "-c", RUNNER, "planner.serve",
                                f"--listen={address}"], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while (result := healthcheck(address)).returncode != 0:
            assert planner.poll() is None, "the planner exited"
            if time.monotonic() > deadline:
                pytest.fail(f"never healthy: {result.stdout}{result.stderr}")
            time.sleep(0.5)
        assert "SERVING" in result.stdout
        assert healthcheck(address, "pac.v1.Planner").returncode == 0
        unknown = healthcheck(address, "pac.v1.NoSuchService")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    finally:
        planner.terminate()
        planner.wait(15)
    assert healthcheck(address).returncode == 1  # nothing listens any more


def test_a_bad_command_line_exits_2() -> None:
    assert healthcheck().returncode == 2
