"""mTLS between agents with certificates made in the test; SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from pac.wire.channel import TransportSecurity
from pac.wire.client import send_tensors
from pac.wire.mailbox import RoutingKey
from protos.v1 import agent_pb2, agent_pb2_grpc, tensors_pb2

ROOT = Path(__file__).resolve().parents[2]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    """A CA and one certificate it signed for localhost/127.0.0.1 (server and client use)."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pac-test-ca",
        cwd=tmp_path,
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "agent.key",
        "-out",
        "agent.csr",
        "-subj",
        "/CN=localhost",
        cwd=tmp_path,
    )
    (tmp_path / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "agent.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "agent.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        cwd=tmp_path,
    )
    return {
        "cert": tmp_path / "agent.pem",
        "key": tmp_path / "agent.key",
        "ca": tmp_path / "ca.pem",
    }


def test_mutual_tls_between_agents(
    start_agents: Any, certificates: dict[str, Path], token: str, status_of: Any, auth: Any
) -> None:
    mtls = TransportSecurity(
        cert=certificates["cert"], key=certificates["key"], ca=certificates["ca"]
    )
    tensor = torch.randn(300, 7)

    async def scenario() -> None:
        async with start_agents(2, security=mtls) as (a, b):
            b.runtime.open_job("j")
            routing = tensors_pb2.Routing(
                job_id="j", step=1, kind=tensors_pb2.TENSOR_KIND_ACTIVATION
            )
            # A's pooled channel presents A's certificate: mTLS both ways.
            await send_tensors(a.peers.get(b.address), {"x": tensor}, routing, token=token)
            got = await b.runtime.mailbox.get(RoutingKey.of(routing), timeout=5)
            assert torch.equal(got.tensors["x"], tensor)

            # A client without a certificate, or speaking plaintext, does not get in.
            no_cert = TransportSecurity(ca=certificates["ca"])
            plaintext = TransportSecurity(insecure=True)
            for security in (no_cert, plaintext):
                channel = (
                    grpc.aio.secure_channel(b.address, security.channel_credentials())
                    if security.ca
                    else (grpc.aio.insecure_channel(b.address))
                )
                stub = agent_pb2_grpc.AgentStub(channel)
                code = await status_of(
                    stub.Describe(agent_pb2.DescribeRequest(), metadata=auth, timeout=5)
                )
                await channel.close()
                assert code == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_sigterm_drains_work_in_flight_and_exits_zero(
    tmp_path: Path, token: str, auth: Any
) -> None:
    env = {**os.environ, "PAC_JOIN_TOKEN": token, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pac.cli",
            "agent",
            "--insecure",
            "--name",
            "edge-1",
            "--listen",
            "127.0.0.1:0",
            "--metrics-port",
            "0",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--threads",
            "1",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on" in line, (line, process.stderr.read() if process.stderr else "")
        address = line.split("listening on ")[1].split()[0]
        metrics_url = f"http://127.0.0.1:{line.split(' metrics ')[1].split()[0]}/metrics"

        def step_started() -> bool:
            with urllib.request.urlopen(metrics_url, timeout=5) as response:
                return 'pac_agent_current_step{job="j"} 1.0' in response.read().decode()

        async def scenario() -> grpc.StatusCode:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = agent_pb2_grpc.AgentStub(channel)
                await stub.OpenJob(agent_pb2.OpenJobRequest(job_id="j"), metadata=auth)
                # Work in flight: a RECV that waits 1.5 s for a message that never comes.
                waiting = stub.RunStep(
                    agent_pb2.RunStepRequest(
                        job_id="j",
                        step=1,
                        recv_timeout_s=1.5,
                        instructions=[agent_pb2.Instruction(action=agent_pb2.ACTION_RECV)],
                    ),
                    metadata=auth,
                )
                task = asyncio.ensure_future(waiting)
                # SIGTERM only once the step runs (it sets the step gauge, then waits).
                while not await asyncio.to_thread(step_started):
                    await asyncio.sleep(0.05)
                process.send_signal(signal.SIGTERM)
                try:
                    await task
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

        # The RECV ran to its own end (its timeout), not cut off by the shutdown.
        assert asyncio.run(scenario()) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
