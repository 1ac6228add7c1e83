"""Tensors between two agents on loopback: bit-exact for every dtype and size, metrics."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from typing import Any

import torch

from pac.wire.client import send_tensors
from pac.wire.codec import DTYPES
from pac.wire.mailbox import RoutingKey
from protos.v1 import agent_pb2, tensors_pb2

ACTIVATION = tensors_pb2.TENSOR_KIND_ACTIVATION


def make_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tensors: dict[str, torch.Tensor] = {}
    for name, dtype in DTYPES.items():
        if dtype == torch.bool:
            tensors[name] = torch.rand(4, 3, generator=generator) > 0.5
        elif dtype.is_floating_point:
            tensors[name] = torch.randn(2, 3, 5, generator=generator).to(dtype)
        else:
            tensors[name] = torch.randint(0, 100, (7,), generator=generator).to(dtype)
    tensors["nan_inf"] = torch.tensor([float("nan"), float("inf"), -0.0])
    tensors["scalar"] = torch.tensor(3, dtype=torch.int64)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["strided"] = torch.arange(20.0).reshape(4, 5)[:, ::2]
    # Over 64 MiB and not a multiple of the chunk size.
    tensors["big"] = torch.randint(
        0, 256, ((64 << 20) + 12345,), dtype=torch.uint8, generator=generator
    )
    return tensors


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def test_round_trip_between_two_agents_is_bit_exact(
    start_agents: Any, auth: Any, agent_stub: Any, token: str
) -> None:
    tensors = make_tensors()

    async def scenario() -> None:
        async with start_agents(2, metrics_port=0, metrics_addr="127.0.0.1") as (a, b):
            async with agent_stub(a.address) as to_a:
                for agent in (a, b):
                    async with agent_stub(agent.address) as stub:
                        await stub.OpenJob(agent_pb2.OpenJobRequest(job_id="j"), metadata=auth)
                # The test (as the coordinator) sends to A; A relays to B with a SEND.
                routing = tensors_pb2.Routing(
                    job_id="j", step=1, stage=0, kind=ACTIVATION, sender="coordinator"
                )
                ack = await send_tensors(a.peers.get(a.address), tensors, routing, token=token)
                assert ack.tensor_count == len(tensors)
                reply = await to_a.RunStep(
                    agent_pb2.RunStepRequest(
                        job_id="j",
                        step=1,
                        recv_timeout_s=10,
                        instructions=[
                            agent_pb2.Instruction(action=agent_pb2.ACTION_RECV, stage=0),
                            agent_pb2.Instruction(
                                action=agent_pb2.ACTION_SEND, stage=0, peer=b.address
                            ),
                        ],
                    ),
                    metadata=auth,
                )
            sent_bytes = reply.results[1].bytes
            assert sent_bytes == ack.received_bytes
            got = await b.runtime.mailbox.get(RoutingKey("j", 1, 0, 1, ACTIVATION), timeout=5)
            assert got.routing.sender == "agent-0"
            for name, tensor in tensors.items():
                received = got.tensors[name]
                assert received.dtype == tensor.dtype and received.shape == tensor.shape, name
                assert torch.equal(bits(received), bits(tensor)), name

            metrics_b = await asyncio.to_thread(scrape, b.metrics_port)
            metrics_a = await asyncio.to_thread(scrape, a.metrics_port)
        assert value(metrics_b, "pac_agent_received_bytes_total", 'peer="agent-0"') == sent_bytes
        assert value(metrics_b, "pac_agent_received_tensors_total", 'peer="agent-0"') == len(
            tensors
        )
        assert value(metrics_a, "pac_agent_sent_bytes_total", f'peer="{b.address}"') == sent_bytes
        assert (
            value(metrics_a, "pac_agent_received_bytes_total", 'peer="coordinator"') == sent_bytes
        )
        assert value(metrics_a, "pac_agent_current_step", 'job="j"') == 1
        assert value(metrics_a, "pac_agent_rss_bytes", "") > 0
        assert 'pac_agent_stream_seconds_count{direction="sent"} 1.0' in metrics_a

    asyncio.run(scenario())


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def value(text: str, metric: str, labels: str) -> float:
    pattern = "^" + re.escape(metric) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    match = re.search(pattern + r" (\S+)$", text, re.MULTILINE)
    assert match, f"{metric}{{{labels}}} not in /metrics"
    return float(match.group(1))


def test_compressed_activations_arrive_as_float32(
    start_agents: Any, auth: Any, agent_stub: Any, token: str
) -> None:
    hidden = torch.randn(2, 64, 64)

    async def scenario() -> None:
        async with start_agents(1) as [agent]:
            agent.runtime.open_job("j")
            routing = tensors_pb2.Routing(job_id="j", step=2, kind=ACTIVATION)
            ack = await send_tensors(
                agent.peers.get(agent.address),
                {"hidden": hidden},
                routing,
                token=token,
                wire_dtype=torch.bfloat16,
            )
            assert ack.received_bytes < hidden.numel() * 4 * 0.6  # half the bytes travelled
            got = await agent.runtime.mailbox.get(RoutingKey.of(routing), timeout=5)
        assert got.tensors["hidden"].dtype == torch.float32
        torch.testing.assert_close(got.tensors["hidden"], hidden, rtol=1e-2, atol=1e-2)

    asyncio.run(scenario())
