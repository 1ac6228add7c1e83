"""Lossy casts by role, the in-flight ledger, and the mailbox's two orders of arrival."""

from __future__ import annotations

import asyncio

import pytest
import torch

from pac.wire.compression import CompressionPolicy, compress, decompress
from pac.wire.errors import DuplicateMessage, LimitExceeded, MalformedMessage, UnknownJob
from pac.wire.limits import InFlightLedger, WireLimits
from pac.wire.mailbox import Mailbox, RoutingKey, TensorMessage
from protos.v1 import tensors_pb2


@pytest.mark.parametrize(("wire", "tolerance"), [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_float32_cast_down_and_back_by_role(wire: str, tolerance: float) -> None:
    policy = CompressionPolicy({"TENSOR_KIND_ACTIVATION": wire})
    hidden = torch.randn(2, 5, 8)
    ids = torch.arange(10)
    sent, metadata = compress(
        {"hidden": hidden, "ids": ids}, policy.wire_dtype("TENSOR_KIND_ACTIVATION")
    )
    assert sent["hidden"].dtype == getattr(torch, wire) and sent["ids"] is ids
    back = decompress(sent, metadata)
    assert back["hidden"].dtype == torch.float32
    torch.testing.assert_close(back["hidden"], hidden, rtol=tolerance, atol=tolerance)
    assert policy.wire_dtype("TENSOR_KIND_GRADIENT") is None


def test_cast_record_naming_a_missing_tensor_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="does not hold"):
        decompress({}, {"pac.cast": '{"ghost": "F32"}'})


def test_ledger_limits_message_size_and_bytes_in_flight_per_peer() -> None:
    ledger = InFlightLedger(WireLimits(max_message_bytes=100, max_in_flight_bytes_per_peer=150))
    with pytest.raises(LimitExceeded, match="exceeds the limit"):
        ledger.reserve("a", 101)
    ledger.reserve("a", 100)
    with pytest.raises(LimitExceeded, match="in flight"):
        ledger.reserve("a", 60)
    ledger.reserve("b", 100)  # another peer has its own budget
    ledger.release("a", 100)
    ledger.reserve("a", 60)
    assert ledger.in_flight("a") == 60


def message(step: int) -> TensorMessage:
    routing = tensors_pb2.Routing(job_id="j", step=step, kind=tensors_pb2.TENSOR_KIND_ACTIVATION)
    return TensorMessage(routing, {"x": torch.ones(1)}, {}, 4)


def test_mailbox_delivers_in_either_order_and_refuses_duplicates() -> None:
    async def scenario() -> None:
        mailbox = Mailbox()
        key = RoutingKey("j", 1, 0, 0, tensors_pb2.TENSOR_KIND_ACTIVATION)
        waiter = asyncio.create_task(mailbox.get(key, timeout=5))
        await asyncio.sleep(0)
        mailbox.put(message(1))  # the wait came first
        assert (await waiter).routing.step == 1
        mailbox.put(message(2))  # the message comes first
        with pytest.raises(DuplicateMessage):
            mailbox.put(message(2))
        assert mailbox.bytes_waiting() == 4
        got = await mailbox.get(RoutingKey("j", 2, 0, 0, tensors_pb2.TENSOR_KIND_ACTIVATION))
        assert got.routing.step == 2 and mailbox.pending() == []
        with pytest.raises(TimeoutError):
            await mailbox.get(key, timeout=0.01)
        mailbox.put(message(3))
        waiting = asyncio.create_task(mailbox.get(key, timeout=5))
        await asyncio.sleep(0)
        assert mailbox.drop_job("j") == 1 and mailbox.pending() == []
        with pytest.raises(asyncio.CancelledError):
            await waiting  # a wait in progress ends with the job
        # A wait asked after the job was dropped fails at once (a step that goes on after
        # its job was closed must not wait out its timeout), until the job is opened again.
        with pytest.raises(UnknownJob, match="was closed here"):
            await mailbox.get(key, timeout=5)
        mailbox.reopen("j")
        with pytest.raises(TimeoutError):
            await mailbox.get(key, timeout=0.01)

    asyncio.run(scenario())
