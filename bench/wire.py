"""Tensor to tensor over loopback: the agents' gRPC stream against two plain TCP baselines.

    python bench/wire.py [--sizes-mib 1 64 512] [--repeats 3]
    sudo python bench/wire.py --sizes-mib 64 512 --link-mbit 1000   # a shaped link

For each tensor size (float32, random, seed 0) three approaches run one after the other,
each as its own pair of processes (a sender and a receiver, so peak memory is their own):

  A  raw TCP: the tensor's bytes alone, ``sendall`` / ``recv_into`` a preallocated buffer
     (the same huge-page buffer as C), ``torch.frombuffer`` at the end: no codec, the ceiling.
  B  TCP + stock ``safetensors.torch.save`` / ``load`` at both ends.
  C  gRPC, agent to agent: a sender ``AgentServer`` streams to a receiver ``AgentServer``
     (pac.wire: zero-copy safetensors framing, 1 MiB chunks, CRC-32, one preallocated buffer).

A transfer is timed at the sender from the sender's tensor to the receiver's ack, which the
receiver sends once it holds the tensor. One untimed warm-up, then the median of the timed
repeats (min and max beside it). After the timed transfers the receiver regenerates the
tensor and checks the last received one equal. Receiver peak extra memory is its peak RSS
(ru_maxrss) after the transfers minus its RSS before the first one, over the tensor size.
CPU s/GB is the user + system CPU of both processes per GB moved: on a shared, busy machine
it is steadier than the throughput.

With ``--link-mbit`` the two processes run in two network namespaces joined by a veth pair,
the sender's side shaped with ``tc tbf``; the last line then also says which share of the
link the gRPC stream used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
TOKEN = "bench-token"
APPROACHES = {
    "A": "raw TCP bytes",
    "B": "TCP + safetensors save/load",
    "C": "gRPC agent to agent (pac.wire)",
}


def make_tensor(size_mib: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(size_mib * MiB // 4, generator=generator)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    except OSError:
        return peak_rss_bytes()


def cpu_seconds() -> float:
    """User + system CPU of this process, all threads (gRPC's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def report(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# ---- receivers -------------------------------------------------------------------------
def recv_exact(connection: socket.socket, view: memoryview) -> None:
    received = 0
    while received < view.nbytes:
        count = connection.recv_into(view[received:], view.nbytes - received)
        if count == 0:
            raise ConnectionError("sender closed the connection mid-message")
        received += count


def tcp_receiver(approach: str, size_mib: int, messages: int, host: str) -> None:
    import safetensors.torch

    from pac.wire.chunking import allocate

    listener = socket.create_server((host, 0))
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    connection, _ = listener.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    baseline = current_rss_bytes()
    received: list[torch.Tensor] = []
    cpu_start = 0.0
    for index in range(messages):
        if index == 1:
            cpu_start = cpu_seconds()  # after the warm-up message
        received.clear()  # keep one message alive at a time, as a consumer would
        length_bytes = bytearray(8)
        recv_exact(connection, memoryview(length_bytes))
        (length,) = struct.unpack("<Q", length_bytes)
        # The same buffer the gRPC receiver uses (a huge-page memory map): A is a fair ceiling.
        buffer = allocate(length)
        recv_exact(connection, buffer)
        if approach == "A":
            tensor = torch.frombuffer(buffer, dtype=torch.float32)
        else:
            tensor = safetensors.torch.load(bytes(buffer))["x"]
        del buffer
        received.append(tensor)
        del tensor
        connection.sendall(b"k")
    cpu = cpu_seconds() - cpu_start
    peak_extra = peak_rss_bytes() - baseline
    equal = torch.equal(received[-1], make_tensor(size_mib))
    report({"peak_extra": peak_extra, "baseline_rss": baseline, "equal": equal, "cpu": cpu})


def grpc_receiver(size_mib: int, messages: int, host: str) -> None:
    from agent.server import AgentConfig, AgentServer
    from pac.wire.channel import TransportSecurity
    from pac.wire.mailbox import RoutingKey
    from protos.v1 import tensors_pb2

    async def main() -> None:
        agent = await AgentServer.start(
            AgentConfig(
                name="receiver",
                listen=f"{host}:0",
                cache_dir=Path("/tmp/pac-bench-receiver"),
                join_token=TOKEN,
                security=TransportSecurity(insecure=True),
                benchmark_s=0.01,
            )
        )
        agent.runtime.open_job("bench")
        print(f"PORT {agent.port}", flush=True)
        baseline = current_rss_bytes()
        last: torch.Tensor | None = None
        cpu_start = 0.0
        for step in range(messages):
            if step == 1:
                cpu_start = cpu_seconds()  # after the warm-up message
            last = None  # keep one message alive at a time, as a consumer would
            key = RoutingKey("bench", step, 0, 0, tensors_pb2.TENSOR_KIND_ACTIVATION)
            message = await agent.runtime.mailbox.get(key, timeout=600)
            last = message.tensors["x"]
            del message
        cpu = cpu_seconds() - cpu_start
        peak_extra = peak_rss_bytes() - baseline
        assert last is not None
        equal = torch.equal(last, make_tensor(size_mib))
        await agent.stop(1)
        report({"peak_extra": peak_extra, "baseline_rss": baseline, "equal": equal, "cpu": cpu})

    asyncio.run(main())


# ---- senders ---------------------------------------------------------------------------
def tcp_sender(approach: str, size_mib: int, messages: int, host: str, port: int) -> None:
    import safetensors.torch

    tensor = make_tensor(size_mib)
    connection = socket.create_connection((host, port))
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    cpu_start = 0.0
    for index in range(messages):
        if index == 1:
            cpu_start = cpu_seconds()
        started = time.perf_counter()
        if approach == "A":
            array: Any = tensor.numpy()
            payload: Any = memoryview(array).cast("B")
        else:
            payload = safetensors.torch.save({"x": tensor})
        connection.sendall(struct.pack("<Q", len(payload)))
        connection.sendall(payload)
        if connection.recv(1) != b"k":
            raise ConnectionError("receiver did not acknowledge")
        times.append(time.perf_counter() - started)
    cpu = cpu_seconds() - cpu_start
    connection.close()
    report({"times": times, "cpu": cpu})


def grpc_sender(size_mib: int, messages: int, host: str, port: int, chunk_kib: int) -> None:
    from agent.server import AgentConfig, AgentServer
    from pac.wire.channel import TransportSecurity
    from protos.v1 import tensors_pb2

    tensor = make_tensor(size_mib)

    async def main() -> None:
        agent = await AgentServer.start(
            AgentConfig(
                name="sender",
                listen="0.0.0.0:0",
                cache_dir=Path("/tmp/pac-bench-sender"),
                join_token=TOKEN,
                security=TransportSecurity(insecure=True),
                benchmark_s=0.01,
                chunk_size=chunk_kib * 1024,
            )
        )
        times = []
        cpu_start = 0.0
        for step in range(messages):
            if step == 1:
                cpu_start = cpu_seconds()
            routing = tensors_pb2.Routing(
                job_id="bench", step=step, sender="sender", kind=tensors_pb2.TENSOR_KIND_ACTIVATION
            )
            started = time.perf_counter()
            await agent.send_to(f"{host}:{port}", {"x": tensor}, routing)
            times.append(time.perf_counter() - started)
        cpu = cpu_seconds() - cpu_start
        await agent.stop(1)
        report({"times": times, "cpu": cpu})

    asyncio.run(main())


# ---- driver ----------------------------------------------------------------------------
NETNS = {"send": "pac-bench-tx", "recv": "pac-bench-rx"}
LINK_ADDRESSES = {"send": "10.77.0.1", "recv": "10.77.0.2"}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def shaped_link(mbit: int) -> Iterator[Topology]:
    """Two namespaces joined by a veth pair; the sender's egress shaped to ``mbit`` with a
    token bucket (burst sized for 10 ms at that rate, as a 1 Gbit/s home switch buffers)."""
    for namespace in NETNS.values():
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        _ip("netns", "add", namespace)
    try:
        _ip("link", "add", "pacb-tx", "type", "veth", "peer", "name", "pacb-rx")
        for role, device in (("send", "pacb-tx"), ("recv", "pacb-rx")):
            _ip("link", "set", device, "netns", NETNS[role])
            _ip("-n", NETNS[role], "addr", "add", f"{LINK_ADDRESSES[role]}/24", "dev", device)
            _ip("-n", NETNS[role], "link", "set", device, "up")
            _ip("-n", NETNS[role], "link", "set", "lo", "up")
        burst_bytes = max(mbit * 1_000_000 // 8 // 100, 64 * 1024)
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                NETNS["send"],
                "tc",
                "qdisc",
                "add",
                "dev",
                "pacb-tx",
                "root",
                "tbf",
                "rate",
                f"{mbit}mbit",
                "burst",
                str(burst_bytes),
                "latency",
                "50ms",
            ],
            check=True,
            capture_output=True,
        )
        yield Topology(host=LINK_ADDRESSES["recv"], link_mbit=mbit)
    finally:
        for namespace in NETNS.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@dataclass(frozen=True)
class Topology:
    """Where the two processes run: loopback, or two network namespaces joined by a veth
    pair whose sender side is shaped with ``tc tbf`` to ``link_mbit``."""

    host: str = "127.0.0.1"
    link_mbit: int = 0

    def prefix(self, role: str) -> list[str]:
        if not self.link_mbit:
            return []
        return ["ip", "netns", "exec", NETNS[role]]


def child(
    role: str,
    approach: str,
    size_mib: int,
    messages: int,
    threads: int,
    chunk_kib: int,
    topology: Topology,
    port: int = 0,
) -> subprocess.Popen[str]:
    command = [
        *topology.prefix(role),
        sys.executable,
        __file__,
        "--role",
        role,
        "--approach",
        approach,
        "--size-mib",
        str(size_mib),
        "--messages",
        str(messages),
        "--threads",
        str(threads),
        "--port",
        str(port),
        "--chunk-kib",
        str(chunk_kib),
        "--host",
        topology.host,
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def read_line(process: subprocess.Popen[str], prefix: str) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise RuntimeError(f"child exited (code {process.wait()}) without printing {prefix!r}")


def run_pair(
    approach: str, size_mib: int, messages: int, threads: int, chunk_kib: int, topology: Topology
) -> tuple[dict[str, Any], dict[str, Any]]:
    receiver = child("recv", approach, size_mib, messages, threads, chunk_kib, topology)
    sender: subprocess.Popen[str] | None = None
    try:
        port = int(read_line(receiver, "PORT "))
        sender = child("send", approach, size_mib, messages, threads, chunk_kib, topology, port)
        sent = json.loads(read_line(sender, "RESULT "))
        received = json.loads(read_line(receiver, "RESULT "))
        if sender.wait() != 0 or receiver.wait() != 0:
            raise RuntimeError(f"approach {approach} at {size_mib} MiB failed")
        return sent, received
    finally:
        for process in (sender, receiver):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def percent(ratio: float) -> str:
    return "-" if ratio != ratio else f"{ratio:.0%}"  # NaN: B was not run


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def torch_only_rss() -> int:
    code = (
        "import resource, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )
    return int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )


def drive(
    sizes: list[int],
    repeats: int,
    threads: int,
    chunk_kib: int,
    approaches: list[str],
    topology: Topology,
) -> int:
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {threads}, gRPC chunk {chunk_kib} KiB, CPU {cpu_model()}"
    )
    where = "loopback"
    if topology.link_mbit:
        where = f"veth between two network namespaces, tbf {topology.link_mbit} Mbit/s"
    print(f"path: {where}")
    print(f"RSS of a process that only imports torch: {torch_only_rss() / MiB:.0f} MiB")
    header = (
        f"{'size':>8} {'approach':<34} {'median GB/s':>11} {'min':>6} {'max':>6} "
        f"{'vs A':>6} {'vs B':>6} {'CPU s/GB tx+rx':>15} {'rx peak extra':>14} equal"
    )
    print(header)
    print("-" * len(header))
    headline: dict[int, tuple[float, float, float]] = {}
    headline_rates: dict[int, float] = {}
    failed = False
    for size in sizes:
        # Small messages vary more: more repeats, still a fraction of a second each.
        timed = max(repeats, min(50, 256 // size))
        rates: dict[str, float] = {}
        for approach in sorted({"A", *approaches}):
            sent, received = run_pair(approach, size, timed + 1, threads, chunk_kib, topology)
            per_second = sorted(size * MiB / t / 1e9 for t in sent["times"][1:])
            rates[approach] = statistics.median(per_second)
            peak = received["peak_extra"] / (size * MiB)
            cpu_per_gb = (sent["cpu"] + received["cpu"]) / (timed * size * MiB / 1e9)
            failed |= not received["equal"]
            versus_a = rates[approach] / rates["A"]
            versus_b = rates[approach] / rates["B"] if "B" in rates else float("nan")
            print(
                f"{size:>5} MiB {approach + ' ' + APPROACHES[approach]:<34} "
                f"{rates[approach]:>11.3f} {per_second[0]:>6.3f} {per_second[-1]:>6.3f} "
                f"{versus_a:>6.0%} {percent(versus_b):>6} {cpu_per_gb:>15.2f} {peak:>13.2f}x "
                f"{received['equal']}"
            )
            if approach == "C":
                headline[size] = (versus_a, versus_b, peak)
                headline_rates[size] = rates[approach]
    if not headline:
        return 1 if failed else 0
    largest = max(headline)
    versus_a, versus_b, peak = headline[largest]
    link = ""
    if topology.link_mbit:
        rate = headline_rates[largest] * 8000 / topology.link_mbit
        link = f", {rate:.0%} of the {topology.link_mbit} Mbit/s link"
    print(
        f"gRPC agent to agent at {largest} MiB: {versus_a:.0%} of raw TCP (A), "
        f"{percent(versus_b)} of TCP + safetensors (B){link}, receiver peak extra "
        f"{peak:.2f}x the tensor"
    )
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-kib", type=int, default=1024, help="gRPC chunk payload size")
    parser.add_argument(
        "--approaches",
        nargs="+",
        choices=list(APPROACHES),
        default=list(APPROACHES),
        help="A is always run (the reference)",
    )
    parser.add_argument("--role", choices=["drive", "send", "recv"], default="drive")
    parser.add_argument("--approach", choices=list(APPROACHES), default="A")
    parser.add_argument("--size-mib", type=int, default=1)
    parser.add_argument("--messages", type=int, default=4)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--link-mbit",
        type=int,
        default=0,
        help="run across two network namespaces joined by a veth pair shaped to this rate "
        "with tc tbf (needs root), instead of loopback",
    )
    args = parser.parse_args()
    a = args
    torch.set_num_threads(args.threads)
    if args.role == "drive":
        if not args.link_mbit:
            return drive(a.sizes_mib, a.repeats, a.threads, a.chunk_kib, a.approaches, Topology())
        with shaped_link(args.link_mbit) as topology:
            return drive(a.sizes_mib, a.repeats, a.threads, a.chunk_kib, a.approaches, topology)
    roles: dict[tuple[str, bool], Callable[[], None]] = {
        ("recv", False): lambda: tcp_receiver(a.approach, a.size_mib, a.messages, a.host),
        ("recv", True): lambda: grpc_receiver(a.size_mib, a.messages, a.host),
        ("send", False): lambda: tcp_sender(a.approach, a.size_mib, a.messages, a.host, a.port),
        ("send", True): lambda: grpc_sender(a.size_mib, a.messages, a.host, a.port, a.chunk_kib),
    }
    roles[(args.role, args.approach == "C")]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
