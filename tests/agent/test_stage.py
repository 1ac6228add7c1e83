"""A model cut into two stages on two agents computes what the same blocks compute in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from pac.families import family_for_dir
from pac.wire.client import send_tensors
from pac.wire.integrity import weights_sha256
from pac.wire.mailbox import RoutingKey
from protos.v1 import agent_pb2, tensors_pb2

F, S, R = agent_pb2.ACTION_FORWARD, agent_pb2.ACTION_SEND, agent_pb2.ACTION_RECV


@torch.no_grad()
def in_process_hidden(model_dir: Path, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    family_class = family_for_dir(model_dir)
    family = family_class(family_class.load(model_dir))
    state = family.embed(batch)
    for block in family.blocks():
        state = family.run_block(block.index, state)
    return state["hidden"]


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_two_stages_on_two_agents_match_the_blocks_in_process(
    family: str,
    tiny_model_dir: Callable[[str], Path],
    start_agents: Any,
    agent_stub: Any,
    auth: Any,
    token: str,
    status_of: Any,
) -> None:
    model_dir = tiny_model_dir(family)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(5, 100, (2, 9), generator=generator),
        "attention_mask": torch.tensor([[1] * 9, [1] * 6 + [0] * 3]),
    }
    expected = in_process_hidden(model_dir, batch)
    digest = weights_sha256(model_dir)

    async def scenario() -> torch.Tensor:
        async with (
            start_agents(2) as (a, b),
            agent_stub(a.address) as to_a,
            agent_stub(b.address) as to_b,
        ):
            for stub in (to_a, to_b):
                await stub.OpenJob(agent_pb2.OpenJobRequest(job_id="j"), metadata=auth)
            wrong = await status_of(
                to_a.LoadStage(
                    agent_pb2.LoadStageRequest(
                        job_id="j",
                        stage=0,
                        model_dir=str(model_dir),
                        layer_start=0,
                        layer_end=1,
                        expected_sha256="0" * 64,
                    ),
                    metadata=auth,
                )
            )
            assert wrong == grpc.StatusCode.FAILED_PRECONDITION  # another model revision
            first = await to_a.LoadStage(
                agent_pb2.LoadStageRequest(
                    job_id="j",
                    stage=0,
                    model_dir=str(model_dir),
                    layer_start=0,
                    layer_end=1,
                    expected_sha256=digest,
                ),
                metadata=auth,
            )
            second = await to_b.LoadStage(
                agent_pb2.LoadStageRequest(
                    job_id="j",
                    stage=1,
                    model_dir=str(model_dir),
                    layer_start=1,
                    layer_end=2,
                    expected_sha256=digest,
                ),
                metadata=auth,
            )
            assert first.weights_sha256 == digest and second.parameter_bytes > 0
            # Stage 1 keeps one block and no embedding: fewer bytes than stage 0.
            assert second.parameter_bytes < first.parameter_bytes

            routing = tensors_pb2.Routing(
                job_id="j", step=1, micro_batch=0, stage=0, kind=tensors_pb2.TENSOR_KIND_BATCH
            )
            await send_tensors(a.peers.get(a.address), batch, routing, token=token)
            await to_a.RunStep(
                agent_pb2.RunStepRequest(
                    job_id="j",
                    step=1,
                    instructions=[
                        agent_pb2.Instruction(action=R, stage=0),
                        agent_pb2.Instruction(action=F, stage=0),
                        agent_pb2.Instruction(action=S, stage=0, peer=b.address),
                    ],
                ),
                metadata=auth,
            )
            reply = await to_b.RunStep(
                agent_pb2.RunStepRequest(
                    job_id="j",
                    step=1,
                    instructions=[
                        agent_pb2.Instruction(action=R, stage=1),
                        agent_pb2.Instruction(action=F, stage=1),
                        agent_pb2.Instruction(
                            action=S,
                            stage=1,
                            peer=a.address,
                            to_stage=2,
                            kind=tensors_pb2.TENSOR_KIND_OUTPUT,
                        ),
                    ],
                ),
                metadata=auth,
            )
            assert reply.compute_seconds > 0
            out = await a.runtime.mailbox.get(
                RoutingKey("j", 1, 0, 2, tensors_pb2.TENSOR_KIND_OUTPUT), timeout=10
            )
            released = await to_b.ReleaseBackbone(
                agent_pb2.ReleaseBackboneRequest(job_id="j"), metadata=auth
            )
            assert released.freed_bytes == second.parameter_bytes
            await to_b.CloseJob(agent_pb2.CloseJobRequest(job_id="j"), metadata=auth)
            return out.tensors["hidden"]

    got = asyncio.run(scenario())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_profile_times_each_block(
    tiny_model_dir: Callable[[str], Path], start_agents: Any, agent_stub: Any, auth: Any
) -> None:
    model_dir = tiny_model_dir("bert")

    async def scenario() -> tuple[agent_pb2.ProfileReply, agent_pb2.ProfileReply]:
        async with start_agents(1) as [agent], agent_stub(agent.address) as stub:
            replies = []
            for side in (False, True):
                replies.append(
                    await stub.Profile(
                        agent_pb2.ProfileRequest(
                            model_dir=str(model_dir),
                            batch_size=2,
                            seq_len=8,
                            repeats=1,
                            side_network=side,
                            second_batch_size=1 if side else 0,
                        ),
                        metadata=auth,
                    )
                )
            return replies[0], replies[1]

    reply, with_side = asyncio.run(scenario())
    # the side network (forward + backward) is timed only when asked for
    assert reply.side_seconds == 0 and with_side.side_seconds > 0
    # a second batch size is timed from the same load, block by block
    assert not reply.second_batch_seconds
    assert len(with_side.second_batch_seconds) == 2
    assert all(seconds > 0 for seconds in with_side.second_batch_seconds)
    assert [layer.index for layer in with_side.layers] == [0, 1]
    assert [layer.index for layer in reply.layers] == [0, 1]
    assert all(layer.forward_seconds > 0 and layer.parameter_bytes > 0 for layer in reply.layers)
    assert reply.layers[0].activation_bytes >= 2 * 8 * 32 * 4  # hidden [2, 8, 32] float32
    assert reply.device.name == "agent-0"


def test_profile_times_a_baselines_backward(
    tiny_model_dir: Callable[[str], Path],
    start_agents: Any,
    agent_stub: Any,
    auth: Any,
    status_of: Any,
) -> None:
    """For a baseline the planner needs the blocks' backward: with the weights' gradients
    (full) or only the input's (LoRA, adapters); an unknown technique is refused."""
    model_dir = tiny_model_dir("gpt2")

    async def scenario() -> dict[str, agent_pb2.ProfileReply]:
        async with start_agents(1) as [agent], agent_stub(agent.address) as stub:
            replies = {}
            for technique in ("full", "lora"):
                replies[technique] = await stub.Profile(
                    agent_pb2.ProfileRequest(
                        model_dir=str(model_dir),
                        batch_size=2,
                        seq_len=8,
                        repeats=3,
                        backward_technique=technique,
                    ),
                    metadata=auth,
                )
            bad = agent_pb2.ProfileRequest(
                model_dir=str(model_dir), batch_size=1, seq_len=4, backward_technique="sgd"
            )
            assert await status_of(stub.Profile(bad, metadata=auth)) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
            return replies

    replies = asyncio.run(scenario())
    for reply in replies.values():
        assert len(reply.layers) == 2
        # backward = (forward + backward) - forward, clipped at 0 against timing noise
        assert all(layer.backward_seconds >= 0 for layer in reply.layers)
        assert sum(layer.backward_seconds for layer in reply.layers) > 0
