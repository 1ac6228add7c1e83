"""Agents in network namespaces on tbf-shaped links: a tensor between them travels at the
link's rate (the shaping is in effect), shows in their metrics, and nothing is left behind."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pac.cluster.netns import Host, NetnsError, ShapedNetwork, cleanup, links, namespaces
from pac.wire.auth import token_metadata
from pac.wire.channel import TransportSecurity, open_channel
from pac.wire.client import send_tensors
from protos.v1 import agent_pb2, agent_pb2_grpc, tensors_pb2

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("needs_root")]

RATE_MBIT = 200.0
TOKEN = "netns-test-token"
AGENT_PORT, METRICS_PORT = 50061, 9101
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


def start_agent(net: ShapedNetwork, name: str, cache: Path) -> None:
    address = net.address(name)
    process = net.spawn(name, [
        sys.executable, "-m", "pac.cli", "agent", f"--name={name}",
        f"--listen={address}:{AGENT_PORT}", f"--advertise={address}:{AGENT_PORT}",
        f"--metrics-port={METRICS_PORT}", f"--cache-dir={cache}", "--insecure", "--threads=1",
    ], env={**os.environ, "PAC_JOIN_TOKEN": TOKEN})
    net.wait_for_port(name, METRICS_PORT, timeout=120, process=process)


async def relay(net: ShapedNetwork, tensor: torch.Tensor) -> agent_pb2.InstructionResult:
    """The test, as a coordinator, sends ``tensor`` to agent a, then has a SEND it to b."""
    a, b = (f"{net.address(h)}:{AGENT_PORT}" for h in ("a", "b"))
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


def test_a_tensor_between_agents_travels_at_the_shaped_rate(tmp_path: Path,
                                                            read_metric: Any) -> None:
    tensor = torch.randint(0, 256, (64 << 20,), dtype=torch.uint8)  # 64 MiB
    name = prefix()
    hosts = [Host("a", RATE_MBIT), Host("b", RATE_MBIT)]
    with ShapedNetwork(hosts, name, SUBNET) as net:
        assert len(namespaces(name)) == 2 and f"{name}br" in links(name)
        for host in ("a", "b"):
            start_agent(net, host, tmp_path / host)
        inbound_b = f"{name}h1"  # the bridge's end of b's link: what b receives crosses it
        before = qdisc_sent_bytes(inbound_b)
        sent = asyncio.run(relay(net, tensor))
        through_b = qdisc_sent_bytes(inbound_b) - before
        metrics_a = f"http://{net.address('a')}:{METRICS_PORT}/metrics"
        metrics_b = f"http://{net.address('b')}:{METRICS_PORT}/metrics"
        sent_by_a = read_metric(metrics_a, "pac_agent_sent_bytes_total",
                                f'peer="{net.address("b")}:{AGENT_PORT}"')
        received_by_b = read_metric(metrics_b, "pac_agent_received_bytes_total", 'peer="a"')
        processes = list(net._processes)

    mbit_per_s = sent.bytes * 8 / sent.seconds / 1e6
    print(f"a -> b: {sent.bytes} bytes in {sent.seconds:.2f} s = {mbit_per_s:.0f} Mbit/s "
          f"on a {RATE_MBIT:g} Mbit/s tbf link")
    assert sent.bytes > 64 << 20
    # Below the link's rate (plus slack for the token bucket): the shaping holds the
    # transfer; above half of it: the transfer fills the link.
    assert 0.5 * RATE_MBIT < mbit_per_s < 1.2 * RATE_MBIT
    assert through_b >= sent.bytes, "the message did not cross b's shaped link"
    assert sent_by_a == received_by_b == sent.bytes
    assert all(process.poll() is not None for process in processes)
    assert gone(name)


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
