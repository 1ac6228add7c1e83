"""A real Prometheus (Debian's package) scrapes a running coordinator and two agents during
transfers and a short PAC job across both agents (pipeline epoch, redistribution, cache
epochs); its HTTP API then answers what the dashboards ask, and runs every dashboard query."""

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

from pac.engine.loading import load_model
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


@dataclass
class Prometheus:
    url: str
    targets_dir: Path

    def scrape(self, job: str, targets: list[str]) -> None:
        """Add targets to scrape (file_sd: Prometheus picks the file up within a second)."""
        groups = [{"targets": targets, "labels": {"job": job}}]
        path = self.targets_dir / f"{job}.json"
        path.with_suffix(".tmp").write_text(json.dumps(groups))
        path.with_suffix(".tmp").replace(path)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[], Prometheus]]:
    """``prometheus()`` -> a real Prometheus (temp storage, stopped at the end) scraping
    four times a second the targets later given to ``.scrape(job, targets)``."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is missing: apt-get install -y "
                    "--no-install-recommends prometheus (.ci/run installs it)")
    processes: list[subprocess.Popen[bytes]] = []

    def run() -> Prometheus:
        targets_dir = tmp_path / "targets"
        targets_dir.mkdir()
        config = {
            # Fast scrapes: the tiny job's phases last a few seconds at most.
            "global": {"scrape_interval": "250ms", "scrape_timeout": "250ms",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "pac",
                "file_sd_configs": [{"files": [f"{targets_dir}/*.json"],
                                     "refresh_interval": "1s"}],
                "honor_labels": True,  # as docker/prometheus.yml: `job` is the training job
                # The same `device` label as the compose config gives: the dashboards use it.
                "relabel_configs": [{"source_labels": ["__address__"], "regex": "(.+)",
                                     "target_label": "device", "replacement": "$1"}],
            }],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log_path = tmp_path / "prometheus.log"
        for _ in range(3):  # a probed port can be taken before Prometheus binds it
            url = f"http://127.0.0.1:{free_port()}"
            with log_path.open("wb") as log:
                process = subprocess.Popen([
                    binary, f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address={url.removeprefix('http://')}",
                    "--storage.tsdb.retention.time=1h"], stdout=log, stderr=subprocess.STDOUT)
            processes.append(process)
            if ready_or_exited(url, process):
                return Prometheus(url, targets_dir)
        pytest.fail(f"Prometheus did not start; see {log_path}")

    yield run
    for process in processes:
        process.terminate()
        process.wait(15)


def ready_or_exited(url: str, process: subprocess.Popen[bytes]) -> bool:
    """Wait until Prometheus at ``url`` is ready (True) or its process exited (False)."""
    wait_for(lambda: _get(f"{url}/-/ready") is not None or process.poll() is not None, 30,
             "Prometheus to be ready")
    return process.poll() is None


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


def toy_data(path: Path, count: int = 128) -> Path:
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


def submit_mesh_job(rest: str, model_dir: Path, data: Path) -> str:
    """A 3-epoch PAC job on the mesh: stage 0 on agent a, stage 1 on agent b for epoch 1,
    then the cache phase on both."""
    blocks = len(load_model(model_dir).family.blocks())
    layout = {"stages": [
        {"begin": 0, "end": blocks // 2, "devices": ["a"], "shares": [1.0]},
        {"begin": blocks // 2, "end": blocks, "devices": ["b"], "shares": [1.0]},
    ], "micro_batches": 2}
    body = {"model_dir": str(model_dir), "data_path": str(data), "eval_path": str(data),
            "task": "classification", "technique": "parallel-adapters", "epochs": 3,
            "batch_size": 4, "max_length": 16, "placement": "mesh",
            "technique_settings": {"layout": layout, "reduction": 4}}
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
        start: Callable[..., Service], prometheus: Callable[[], Prometheus],
        tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    model_dir = tiny_model_dir("bert")
    # Port 0 everywhere, read back from each service's first line: a port probed free
    # beforehand may be taken by another process on a shared machine before it is bound.
    coordinator = start("coordinator.cli", "--listen=127.0.0.1:0", "--rest=127.0.0.1:0",
                        "--metrics-port=0", "--metrics-addr=127.0.0.1",
                        f"--state={tmp_path / 'state'}", "--insecure")
    scraper = prometheus()
    grpc_port, rest_port, metrics_port = re.search(  # type: ignore[union-attr]
        r":(\d+) rest (\d+) metrics (\d+)", coordinator.first_line()).groups()
    started = [start("agent.cli", f"--coordinator=127.0.0.1:{grpc_port}", f"--name={name}",
                     "--listen=127.0.0.1:0", "--metrics-port=0", f"--cache-dir={tmp_path / name}",
                     "--insecure", "--threads=1") for name in ("a", "b")]
    scraper.scrape("pac-coordinator", [f"127.0.0.1:{metrics_port}"])
    base = scraper.url
    eventually(base, 'up{job="pac-coordinator"}', "job", lambda seen: seen == {
        "pac-coordinator": 1.0})
    agents, agent_targets = {}, set()
    for name, service in zip(("a", "b"), started, strict=True):
        address, port = re.search(  # type: ignore[union-attr]
            r"listening on (\S+) metrics (\d+)", service.first_line()).groups()
        agents[name] = address
        agent_targets.add(f"127.0.0.1:{port}")
    scraper.scrape("pac-agent", sorted(agent_targets))

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

    # A short PAC job across the two agents; its phase, speed, epoch, samples and loss.
    job = submit_mesh_job(f"http://127.0.0.1:{rest_port}", model_dir,
                          toy_data(tmp_path / "t.jsonl"))
    done = eventually(base, f'pac_job_state{{job="{job}",state=~"done|failed"}}', "state",
                      lambda seen: max(seen.values(), default=0) == 1, timeout=120)
    assert done == {"done": 1.0, "failed": 0.0}
    assert values(base, f'pac_job_samples_per_second{{job="{job}"}}', "job")[job] > 0
    # Scraped while it trained, not only at the end.
    training = f'max_over_time(pac_job_state{{job="{job}",state="training"}}[10m])'
    assert values(base, training, "job") == {job: 1.0}
    assert values(base, f'pac_job_epoch{{job="{job}"}}', "job")[job] == 3
    assert values(base, f'pac_job_samples_total{{job="{job}"}}', "job")[job] == 3 * 128
    assert values(base, f'pac_job_loss{{job="{job}"}}', "job")[job] > 0
    assert values(base, f'pac_job_redistribution_progress{{job="{job}"}}', "job")[job] == 1
    # Both agents ran the job's steps, hold a share of the cache, and traded activations.
    steps = f'max_over_time(pac_agent_current_step{{job="{job}"}}[10m])'
    assert set(values(base, steps, "instance")) == agent_targets
    # (while the job ran: its agents delete their shares of the cache when it closes)
    eventually(base, "max_over_time(pac_agent_cache_bytes[10m])", "instance",
               lambda seen: set(seen) == agent_targets and min(seen.values()) > 0)
    eventually(base, "pac_agent_cache_bytes", "instance",
               lambda seen: set(seen) == agent_targets and max(seen.values()) == 0)
    eventually(base, "sum by (peer) (pac_agent_sent_bytes_total)", "peer",
               lambda seen: seen.get(agents["b"], 0) > 2 * sent and seen.get(agents["a"], 0) > 0)

    # Every dashboard query is valid PromQL against this Prometheus.
    for expr in dashboard_exprs():
        query(base, expr)
