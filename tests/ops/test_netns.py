"""A mesh in network namespaces on tbf-shaped links (`python -m pac.cluster.netns up`): the
agents register with the coordinator in its own namespace, a tensor between two agents
travels at the link's rate (the shaping is in effect) and shows in their metrics, a PAC job
trains across the links (activations and gradients counted per peer, through the shaped
qdisc), and nothing the launcher made is left behind."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pac.cluster.netns import Host, NetnsError, ShapedNetwork, cleanup, links, namespaces
from pac.engine.loading import load_model
from pac.wire.auth import token_metadata
from pac.wire.channel import TransportSecurity, open_channel
from pac.wire.client import send_tensors
from protos.v1 import agent_pb2, agent_pb2_grpc, tensors_pb2

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("needs_root")]

RATE_MBIT = 200.0
TOKEN = "netns-test-token"
METRICS_PORT, COORDINATOR_METRICS = 9101, 9100
SUBNET = "10.77.200.0/24"


def prefix() -> str:
    return f"pt{os.getpid() % 100000}"  # unique per test process, short enough for ifnames


def gone(prefix: str) -> bool:
    return not namespaces(prefix) and not links(prefix)


def qdisc_sent_bytes(device: str) -> int:
    shown = subprocess.run(["tc", "-s", "qdisc", "show", "dev", device], capture_output=True,
                           text=True, check=True).stdout
    match = re.search(r"qdisc tbf .*?Sent (\d+) bytes", shown, re.DOTALL)
    assert match, shown
    return int(match.group(1))


async def relay(a: str, b: str, tensor: torch.Tensor) -> agent_pb2.InstructionResult:
    """The test, as a coordinator, sends ``tensor`` to agent a, then has a SEND it to b."""
    auth = token_metadata(TOKEN)
    plaintext = TransportSecurity(insecure=True)
    channels = [open_channel(a, plaintext), open_channel(b, plaintext)]
    try:
        for channel in channels:
            await agent_pb2_grpc.AgentStub(channel).OpenJob(
                agent_pb2.OpenJobRequest(job_id="j"), metadata=auth)
        routing = tensors_pb2.Routing(job_id="j", step=1, stage=0, sender="coordinator",
                                      kind=tensors_pb2.TENSOR_KIND_ACTIVATION)
        await send_tensors(channels[0], {"hidden": tensor}, routing, token=TOKEN)
        reply = await agent_pb2_grpc.AgentStub(channels[0]).RunStep(agent_pb2.RunStepRequest(
            job_id="j", step=1, recv_timeout_s=30, instructions=[
                agent_pb2.Instruction(action=agent_pb2.ACTION_RECV, stage=0),
                agent_pb2.Instruction(action=agent_pb2.ACTION_SEND, stage=0, peer=b),
            ]), metadata=auth, timeout=60)
        result: agent_pb2.InstructionResult = reply.results[1]
        return result
    finally:
        for channel in channels:
            await channel.close()


async def probe(a: str, b: str) -> agent_pb2.LinkMeasurement:
    """Agent a measures its link to agent b (2 MiB payloads: past tbf's burst)."""
    channel = open_channel(a, TransportSecurity(insecure=True))
    try:
        reply = await agent_pb2_grpc.AgentStub(channel).ProbeLinks(
            agent_pb2.ProbeLinksRequest(peers=[b], payload_bytes=2 << 20, repeats=3),
            metadata=token_metadata(TOKEN), timeout=60)
        link: agent_pb2.LinkMeasurement = reply.links[0]
        return link
    finally:
        await channel.close()


def launcher_lines(process: subprocess.Popen[str], until: str, timeout: float) -> list[str]:
    """stdout lines of the launcher up to the one starting with ``until``."""
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put("")  # end of output: the launcher exited

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    while not seen or not seen[-1].startswith(until):
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the launcher did not print {until!r} within {timeout:.0f} s: {seen}")
        if not line:
            pytest.fail(f"the launcher exited ({process.wait()}): {seen}")
        seen.append(line)
    return seen


def wait_registered(read_metric: Any, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while read_metric(url, "pac_agent_registered", "") != 1:
        assert time.monotonic() < deadline, f"{url}: the agent never registered"
        time.sleep(0.5)


def train_on_the_mesh(rest: str, model_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """A 2-epoch PAC job over REST: stage 0 on agent a, stage 1 on agent b (activations
    a -> b, gradients b -> a), then the cache phase on both; returns the finished job."""
    rows = [{"text": f"{'good fine' if i % 2 else 'bad dull'} story {i}",
             "label": "pos" if i % 2 else "neg"} for i in range(16)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    blocks = len(load_model(model_dir).family.blocks())
    layout = {"stages": [
        {"begin": 0, "end": blocks // 2, "devices": ["a"], "shares": [1.0]},
        {"begin": blocks // 2, "end": blocks, "devices": ["b"], "shares": [1.0]},
    ], "micro_batches": 2}
    body = {"model_dir": str(model_dir), "data_path": str(data), "task": "classification",
            "technique": "parallel-adapters", "epochs": 2, "batch_size": 8,
            "technique_settings": {"layout": layout, "reduction": 4}, "placement": "mesh",
            "output_dir": str(tmp_path / "out")}
    request = urllib.request.Request(f"{rest}/v1/jobs", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        job_id = json.loads(reply.read())["job_id"]
    deadline = time.monotonic() + 180
    while True:
        with urllib.request.urlopen(f"{rest}/v1/jobs/{job_id}", timeout=10) as reply:
            job: dict[str, Any] = json.loads(reply.read())
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"the mesh job is still {job['state']}"
        time.sleep(0.5)


def test_a_mesh_in_namespaces_moves_tensors_and_trains(
        tmp_path: Path, read_metric: Any, tiny_model_dir: Callable[[str], Path]) -> None:
    name, targets = prefix(), tmp_path / "targets.json"
    launcher = subprocess.Popen([
        sys.executable, "-m", "pac.cluster.netns", "up", f"--prefix={name}",
        f"--subnet={SUBNET}", f"--agent=a:{RATE_MBIT:g}", f"--agent=b:{RATE_MBIT:g}",
        f"--join-token={TOKEN}", f"--prometheus-targets={targets}", "--agent-threads=1"],
        stdout=subprocess.PIPE, text=True)
    try:
        lines = launcher_lines(launcher, "Ctrl-C", timeout=180)
        agents = dict(re.findall(r"^agent (\S+) (\S+) ", "".join(lines), re.MULTILINE))
        assert set(agents) == {"a", "b"}
        metrics = {host: f"http://{address.rsplit(':', 1)[0]}:{METRICS_PORT}/metrics"
                   for host, address in agents.items()}
        for url in metrics.values():
            wait_registered(read_metric, url)  # with the coordinator in its own namespace
        # The coordinator's REST API answers from the root namespace (where jobs come from).
        rest = re.search(r" rest (\S+) ", lines[0]).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(f"{rest}/v1/agents", timeout=10) as reply:
            listed = {agent["name"]: agent["address"] for agent in json.loads(reply.read())}
        assert listed == agents
        inbound_b = f"{name}h2"  # hosts: mesh, a, b; the bridge's end of b's link
        before = qdisc_sent_bytes(inbound_b)
        sent = asyncio.run(relay(agents["a"], agents["b"],
                                 torch.randint(0, 256, (64 << 20,), dtype=torch.uint8)))
        through_b = qdisc_sent_bytes(inbound_b) - before
        probed = asyncio.run(probe(agents["a"], agents["b"]))
        sent_by_a = read_metric(metrics["a"], "pac_agent_sent_bytes_total",
                                f'peer="{agents["b"]}"')
        received_by_b = read_metric(metrics["b"], "pac_agent_received_bytes_total", 'peer="a"')
        scraped = {target for group in json.loads(targets.read_text())
                   for target in group["targets"]}

        # An end-to-end PAC job across the two shaped links.
        qdisc_before_job = qdisc_sent_bytes(inbound_b)
        job = train_on_the_mesh(rest, tiny_model_dir("bert"), tmp_path)
        a_to_b = read_metric(metrics["a"], "pac_agent_sent_bytes_total",
                             f'peer="{agents["b"]}"') - sent_by_a
        # (b sent nothing before the job: the relay went a -> b only.)
        b_to_a = read_metric(metrics["b"], "pac_agent_sent_bytes_total",
                             f'peer="{agents["a"]}"')
        job_through_b = qdisc_sent_bytes(inbound_b) - qdisc_before_job
        coordinator_metrics = f"{rest.rsplit(':', 1)[0]}:{COORDINATOR_METRICS}/metrics"
        done = read_metric(coordinator_metrics, "pac_job_state",
                           f'job="{job["job_id"]}",state="done"')
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(60)
    mbit_per_s = sent.bytes * 8 / sent.seconds / 1e6
    print(f"a -> b: {sent.bytes} bytes in {sent.seconds:.2f} s = {mbit_per_s:.0f} Mbit/s "
          f"on a {RATE_MBIT:g} Mbit/s tbf link")
    assert sent.bytes > 64 << 20
    # The agents' own link probe (what the planner is given) sees the shaped rate too.
    probed_mbit = probed.bandwidth_bps * 8 / 1e6
    print(f"a's probe of its link to b: {probed_mbit:.0f} Mbit/s, "
          f"{probed.latency_s * 1e3:.2f} ms one way")
    assert 0.5 * RATE_MBIT < probed_mbit < 1.3 * RATE_MBIT
    assert 0 < probed.latency_s < 0.05
    # Below the link's rate (plus slack for the token bucket): the shaping holds the
    # transfer; above half of it: the transfer fills the link.
    assert 0.5 * RATE_MBIT < mbit_per_s < 1.2 * RATE_MBIT
    assert through_b >= sent.bytes, "the message did not cross b's shaped link"
    assert sent_by_a == received_by_b == sent.bytes
    assert {url.split("/")[2] for url in metrics.values()} <= scraped
    assert launcher.returncode == 0
    print(f"mesh job {job['job_id']}: {a_to_b:.0f} bytes a -> b, {b_to_a:.0f} bytes b -> a")
    assert job["state"] == "done", job["reason"]
    assert done == 1
    # Activations went a -> b and gradients b -> a, through b's shaped link.
    assert a_to_b > 0 and b_to_a > 0
    assert job_through_b >= a_to_b
    assert gone(name), "the launcher left namespaces or links behind"
    assert not targets.exists()


def test_everything_is_removed_when_the_body_fails() -> None:
    name = prefix()
    with pytest.raises(RuntimeError, match="body failed"), ShapedNetwork(
            [Host("x", 100)], name, SUBNET) as net:
        sleeper = net.spawn("x", ["sleep", "60"])
        assert namespaces(name) == [f"{name}-x"]
        raise RuntimeError("body failed")
    assert sleeper.poll() is not None
    assert gone(name)


def test_cleanup_removes_what_a_killed_run_left() -> None:
    name = prefix()
    net = ShapedNetwork([Host("x"), Host("y")], name, SUBNET)
    net.create()
    try:
        stray = subprocess.Popen(["ip", "netns", "exec", f"{name}-x", "sleep", "60"])
        with pytest.raises(NetnsError, match="exist already"):
            ShapedNetwork([Host("z")], name, SUBNET).create()
        cleanup(name)  # what `python -m pac.cluster.netns cleanup` does after a kill -9
        assert stray.wait(10) != 0
        assert gone(name)
    finally:
        net.close()
    assert gone(name)


def test_a_subnet_in_use_is_refused() -> None:
    name = prefix()
    with ShapedNetwork([Host("x")], name, SUBNET), pytest.raises(NetnsError, match="overlaps"):
        ShapedNetwork([Host("y")], f"{name}b", SUBNET).create()
    assert gone(name) and gone(f"{name}b")
