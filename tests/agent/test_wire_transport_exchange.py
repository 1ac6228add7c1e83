"""WireTransport.exchange: one all-reduce round's sends and receives at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from agent.training import Sender, WireTransport
from pac.pipeline.all_reduce import ring_all_reduce
from pac.pipeline.job import MeshJobSettings
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.pipeline.step_clock import StepClock
from pac.pipeline.transport import MessageKey, Tensors
from pac.tasks import TaskSpec
from pac.wire.mailbox import Mailbox, TensorMessage
from protos.v1 import tensors_pb2

DEVICES = ("agent-0", "agent-1")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, as an agent's: the workers call in from theirs."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def transports(loop: asyncio.AbstractEventLoop, failing: str = "") -> dict[str, WireTransport]:
    """Two devices whose sends file the message straight into the peer's mailbox (the
    wire's job); ``failing``: the device whose sends fail, as to a peer that went away."""
    settings = MeshJobSettings(
        model_dir="unused",
        task=TaskSpec("classification", labels=("a", "b")),
        technique="parallel-adapters",
        technique_settings={},
        layout=PipelineLayout((StageSpec(0, 2, DEVICES, (1.0, 1.0)),), micro_batches=1),
        addresses={d: d for d in DEVICES},
    )
    boxes = {d: Mailbox() for d in DEVICES}
    made: dict[str, WireTransport] = {}

    def sender(device: str) -> Sender:
        async def send(
            address: str,
            tensors: Tensors,
            routing: tensors_pb2.Routing,
            wire_dtype: torch.dtype | None,
        ) -> int:
            await asyncio.sleep(0.01)  # the ack comes back after the peer filed it
            if device == failing:
                raise ConnectionError(f"{address} does not answer")
            copies = {name: t.clone() for name, t in tensors.items()}
            boxes[address].put(TensorMessage(routing, copies, {}, 0))
            return 0

        return send

    for device in DEVICES:
        made[device] = WireTransport("job", device, settings, sender(device), boxes[device], loop)
    return made


def test_a_ring_over_exchanges_sums_on_both_devices(loop: asyncio.AbstractEventLoop) -> None:
    wire = transports(loop)
    vectors = {
        d: [torch.arange(10.0) * (i + 1), torch.ones(3) * (i + 1)] for i, d in enumerate(DEVICES)
    }
    clocks = {d: StepClock() for d in DEVICES}
    with ThreadPoolExecutor(2) as pool:
        futures = {
            d: pool.submit(ring_all_reduce, wire[d], DEVICES, d, 7, vectors[d], 30.0, clocks[d])
            for d in DEVICES
        }
        sums = {d: f.result(timeout=60) for d, f in futures.items()}
    for d in DEVICES:
        torch.testing.assert_close(sums[d][0], torch.arange(10.0) * 3)
        torch.testing.assert_close(sums[d][1], torch.ones(3) * 3)
        assert set(clocks[d].seconds) == {"exchange"}


def test_a_failed_send_ends_the_exchange_without_waiting_for_the_peer(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = transports(loop, failing="agent-0")
    key_out = MessageKey(1, "allreduce", 0, "agent-0", "agent-1")
    key_in = MessageKey(1, "allreduce", 0, "agent-1", "agent-0")
    with ThreadPoolExecutor(1) as pool:
        # No timeout on the receive: were it not cancelled, the exchange would never end
        # (the peer never sends here), and result() would give up after 60 s.
        future = pool.submit(
            wire["agent-0"].exchange, [(key_out, {"x": torch.ones(2)})], [key_in], None
        )
        with pytest.raises(ConnectionError, match="does not answer"):
            future.result(timeout=60)


def test_a_receive_that_never_comes_times_out_after_the_sends(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = transports(loop)
    key_out = MessageKey(2, "allreduce", 0, "agent-0", "agent-1")
    key_in = MessageKey(2, "allreduce", 0, "agent-1", "agent-0")
    with pytest.raises(TimeoutError):
        wire["agent-0"].exchange([(key_out, {"x": torch.ones(2)})], [key_in], 0.2)
    # The send went through: the peer has the message.
    got = wire["agent-1"].recv(key_out, timeout=5)
    torch.testing.assert_close(got["x"], torch.ones(2))
