"""A real Prometheus (Debian's package) scrapes a running coordinator and two agents during
a transfer and a short job; its HTTP API then answers what the dashboards ask."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pac.wire.auth import token_metadata
from pac.wire.channel import TransportSecurity, open_channel
from pac.wire.client import send_tensors
from protos.v1 import agent_pb2, agent_pb2_grpc, tensors_pb2

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "prometheus-test-token"
# Runs a service's command module the way `pac <command>` does.
RUNNER = ("import argparse, importlib, sys; m = importlib.import_module(sys.argv[1]); "
          "p = argparse.ArgumentParser(); m.add_arguments(p); "
          "sys.exit(m.run(p.parse_args(sys.argv[2:])))")


@dataclass
class Service:
    process: subprocess.Popen[str]
    lines: queue.Queue[str]
    log: Path

    def first_line(self, timeout: float = 120.0) -> str:
        """The first line on stdout: where the service serves (waits until it is up)."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.log.name} printed nothing in {timeout:.0f} s; see {self.log}")
        assert line, f"exited ({self.process.wait()}); see {self.log}"
        return line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """``start(module, *args)``: a service in its own process (as `pac <command>` runs it),
    stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[subprocess.Popen[str]] = []

    def run(module: str, *args: str) -> Service:
        log_path = tmp_path / f"{module}-{len(started)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen([sys.executable, "-c", RUNNER, module, *args],
                                       text=True, stdout=subprocess.PIPE, stderr=log,
                                       env={**os.environ, "PAC_JOIN_TOKEN": TOKEN}, cwd=ROOT)
        started.append(process)
        lines: queue.Queue[str] = queue.Queue()
        stdout = process.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        return Service(process, lines, log_path)

    yield run
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, list[str]]], str]]:
    """``prometheus({job: [host:port, ...]})`` -> the base URL of a real Prometheus that
    scrapes those targets every second (temp storage; stopped at the end)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is missing: apt-get install -y "
                    "--no-install-recommends prometheus (.ci/run installs it)")
    processes: list[subprocess.Popen[bytes]] = []

    def run(jobs: dict[str, list[str]]) -> str:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": job, "static_configs": [{"targets": targets}],
                "honor_labels": True,  # as docker/prometheus.yml: `job` is the training job
                # The same `device` label as the compose config gives: the dashboards use it.
                "relabel_configs": [{"source_labels": ["__address__"], "regex": "(.+)",
                                     "target_label": "device", "replacement": "$1"}],
            } for job, targets in jobs.items()],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        address = f"127.0.0.1:{free_port()}"
        log = (tmp_path / "prometheus.log").open("wb")
        processes.append(subprocess.Popen([
            binary, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={address}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT))
        url = f"http://{address}"
        wait_for(lambda: _get(f"{url}/-/ready") is not None, 30, "Prometheus to be ready")
        return url

    yield run
    for process in processes:
        process.terminate()
        process.wait(15)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def wait_for(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector of ``expr`` (``[{"metric": {...}, "value": [t, "v"]}]``)."""
    text = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert text is not None, f"query {expr!r} failed"
    answer = json.loads(text)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def values(base: str, expr: str, label: str) -> dict[str, float]:
    return {row["metric"].get(label, ""): float(row["value"][1]) for row in query(base, expr)}


def eventually(base: str, expr: str, label: str, check: Callable[[dict[str, float]], bool],
               timeout: float = 30.0) -> dict[str, float]:
    """Poll ``expr`` until ``check`` holds on its values by ``label``; return them."""
    seen: dict[str, float] = {}

    def ready() -> bool:
        nonlocal seen
        seen = values(base, expr, label)
        return check(seen)

    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{expr} by {label} never satisfied the check; last: {seen}")
        time.sleep(0.5)
    return seen


def toy_data(path: Path, count: int = 32) -> Path:
    rows = [{"text": f"the film was {'good' if i % 2 else 'bad'} number {i}",
             "label": "pos" if i % 2 else "neg"} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


async def relay(a: str, b: str, tensor: torch.Tensor, step: int = 1) -> int:
    """The test, as a coordinator, sends ``tensor`` to agent a, which SENDs it on to b."""
    auth = token_metadata(TOKEN)
    plaintext = TransportSecurity(insecure=True)
    channels = [open_channel(a, plaintext), open_channel(b, plaintext)]
    try:
        for channel in channels:
            await agent_pb2_grpc.AgentStub(channel).OpenJob(
                agent_pb2.OpenJobRequest(job_id="relay"), metadata=auth)
        routing = tensors_pb2.Routing(job_id="relay", step=step, sender="coordinator",
                                      kind=tensors_pb2.TENSOR_KIND_ACTIVATION)
        await send_tensors(channels[0], {"hidden": tensor}, routing, token=TOKEN)
        reply = await agent_pb2_grpc.AgentStub(channels[0]).RunStep(agent_pb2.RunStepRequest(
            job_id="relay", step=step, recv_timeout_s=10, instructions=[
                agent_pb2.Instruction(action=agent_pb2.ACTION_RECV, stage=0),
                agent_pb2.Instruction(action=agent_pb2.ACTION_SEND, stage=0, peer=b),
            ]), metadata=auth, timeout=30)
        return int(reply.results[1].bytes)
    finally:
        for channel in channels:
            await channel.close()


def submit_job(rest: str, model_dir: Path, data: Path) -> str:
    body = {"model_dir": str(model_dir), "data_path": str(data), "eval_path": str(data),
            "task": "classification", "technique": "parallel-adapters", "epochs": 2,
            "batch_size": 4, "max_length": 16, "placement": "local"}
    request = urllib.request.Request(f"{rest}/v1/jobs", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["job_id"])


def dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted((ROOT / "docker/grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [target["expr"].replace("$job", ".*") for target in panel["targets"]]
    return exprs


def test_prometheus_scrapes_the_mesh_during_a_job(
        start: Callable[..., Service], prometheus: Callable[[dict[str, list[str]]], str],
        tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    model_dir = tiny_model_dir("bert")
    ports = {name: free_port() for name in ("grpc", "rest", "metrics", "a", "b")}
    # Everything starts at once (agents retry registering until the coordinator is up).
    services = [start("coordinator.cli", f"--listen=127.0.0.1:{ports['grpc']}",
                      f"--rest=127.0.0.1:{ports['rest']}", f"--metrics-port={ports['metrics']}",
                      "--metrics-addr=127.0.0.1", f"--state={tmp_path / 'state'}", "--insecure",
                      "--heartbeat-interval=1")]
    services += [start("agent.cli", f"--coordinator=127.0.0.1:{ports['grpc']}", f"--name={name}",
                       "--listen=127.0.0.1:0", f"--metrics-port={ports[name]}",
                       f"--cache-dir={tmp_path / name}", "--insecure", "--threads=1")
                 for name in ("a", "b")]
    agent_targets = {f"127.0.0.1:{ports[name]}" for name in ("a", "b")}
    base = prometheus({"pac-coordinator": [f"127.0.0.1:{ports['metrics']}"],
                       "pac-agent": sorted(agent_targets)})
    services[0].first_line()
    # A short job on the coordinator (LocalDriver), running while the rest is checked.
    job = submit_job(f"http://127.0.0.1:{ports['rest']}", model_dir,
                     toy_data(tmp_path / "t.jsonl"))
    agents = {name: re.search(r"listening on (\S+) ", service.first_line()).group(1)  # type: ignore
              for name, service in zip(("a", "b"), services[1:], strict=True)}

    # Liveness: both agents scraped, registered, and live at the coordinator.
    eventually(base, 'up{job="pac-agent"}', "instance",
               lambda seen: seen == dict.fromkeys(agent_targets, 1.0))
    eventually(base, "pac_agent_registered", "instance",
               lambda seen: seen == dict.fromkeys(agent_targets, 1.0))
    eventually(base, "pac_coordinator_agent_up", "agent",
               lambda seen: seen == {"a": 1.0, "b": 1.0})

    # Bytes per peer after a transfer a -> b.
    sent = asyncio.run(relay(agents["a"], agents["b"], torch.randn(1 << 20)))
    eventually(base, "sum by (peer) (pac_agent_sent_bytes_total)", "peer",
               lambda seen: seen.get(agents["b"]) == sent)
    eventually(base, "sum by (peer) (pac_agent_received_bytes_total)", "peer",
               lambda seen: seen.get("a") == sent and seen.get("coordinator", 0) > 4 << 20)
    # The pipeline dashboard's bits per link: a rate, so it needs a second transfer (a
    # series born with its first value has no increase yet).
    asyncio.run(relay(agents["a"], agents["b"], torch.randn(1 << 20), step=2))
    eventually(base, "8 * sum by (device, peer) (rate(pac_agent_sent_bytes_total[30s]))",
               "peer", lambda seen: seen.get(agents["b"], 0) > 0)

    # The job's phase, speed, epoch, samples and loss.
    done = eventually(base, f'pac_job_state{{job="{job}",state=~"done|failed"}}', "state",
                      lambda seen: max(seen.values(), default=0) == 1, timeout=120)
    assert done == {"done": 1.0, "failed": 0.0}
    assert values(base, f'pac_job_samples_per_second{{job="{job}"}}', "job")[job] > 0
    # Scraped while it trained, not only at the end.
    training = f'max_over_time(pac_job_state{{job="{job}",state="training"}}[10m])'
    assert values(base, training, "job") == {job: 1.0}
    assert values(base, f'pac_job_epoch{{job="{job}"}}', "job")[job] == 2
    assert values(base, f'pac_job_samples_total{{job="{job}"}}', "job")[job] == 2 * 32
    assert values(base, f'pac_job_loss{{job="{job}"}}', "job")[job] > 0
    cache = values(base, "pac_agent_cache_bytes", "instance")
    assert set(cache) == agent_targets and all(v >= 0 for v in cache.values())

    # Every dashboard query is valid PromQL against this Prometheus.
    for expr in dashboard_exprs():
        query(base, expr)
