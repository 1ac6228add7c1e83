"""Network-shaped test hosts: one Linux network namespace per host, each joined to a bridge
by a veth pair whose two ends are limited with ``tc ... tbf`` (so a host's rate holds in
both directions, like a device's link to a switch).

    with ShapedNetwork([Host("mesh"), Host("jetson-1", rate_mbit=100)]) as net:
        agent = net.spawn("jetson-1", ["pac", "agent", "--listen", "10.77.0.11:50061", ...])
        net.address("jetson-1")   # "10.77.0.11"; the root namespace reaches it via the bridge

Everything made is named after ``prefix`` (namespaces ``{prefix}-{host}``, links
``{prefix}br``, ``{prefix}h{i}``, ``{prefix}n{i}``) and removed on exit, on an exception,
at interpreter exit (atexit), or later by ``cleanup(prefix)`` after a hard kill. Traffic
stays on that bridge and in those namespaces. Needs root (CAP_NET_ADMIN) and iproute2.

``python -m pac.cluster.netns up`` runs a whole mesh this way (planner and coordinator in one
namespace, each agent in its own) until Ctrl-C; ``... cleanup`` removes leftovers.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

DEFAULT_PREFIX = "pacn"
DEFAULT_SUBNET = "10.77.0.0/24"
# Kernel limit on interface names is 15 characters: "{prefix}h{index}" must fit.
_MAX_PREFIX = 8


class NetnsError(RuntimeError):
    """A namespace, link or qdisc could not be made (not root? iproute2 missing?)."""


@dataclass(frozen=True)
class Host:
    """One emulated machine: its own network namespace and a link of ``rate_mbit``."""

    name: str
    rate_mbit: float = 1000.0
    # tbf's bucket: at least rate/HZ bytes; 128 KiB is enough up to about 1 Gbit/s.
    burst: str = "128kb"
    latency_ms: int = 50


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError as error:
        raise NetnsError(f"{argv[0]} is missing: apt-get install -y iproute2") from error
    if check and result.returncode != 0:
        raise NetnsError(
            f"`{' '.join(argv)}` failed: {result.stderr.strip()} "
            "(network namespaces need root: run as root or with CAP_NET_ADMIN)"
        )
    return result


def namespaces(prefix: str) -> list[str]:
    """The network namespaces a ShapedNetwork with ``prefix`` makes: ``{prefix}-*``."""
    listed = _run(["ip", "netns", "list"], check=False).stdout.splitlines()
    return [line.split()[0] for line in listed if line.startswith(prefix + "-")]


def links(prefix: str) -> list[str]:
    """The root namespace's links a ShapedNetwork with ``prefix`` makes (bridge, veths)."""
    listed = _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines()
    names = [line.split(":", 2)[1].strip().split("@")[0] for line in listed if ":" in line]
    pattern = re.compile(re.escape(prefix) + r"(br|h\d+|n\d+)")
    return [name for name in names if pattern.fullmatch(name)]


def cleanup(prefix: str = DEFAULT_PREFIX) -> None:
    """Remove the namespaces (killing what runs in them) and links made with ``prefix``."""
    for namespace in namespaces(prefix):
        pids = _run(["ip", "netns", "pids", namespace], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run(["ip", "netns", "del", namespace], check=False)
    for link in links(prefix):  # veths die with their namespace; the bridge does not
        _run(["ip", "link", "del", link], check=False)


@dataclass
class ShapedNetwork:
    """Namespaces for ``hosts`` on one bridge; use as a context manager."""

    hosts: Sequence[Host]
    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET
    log_dir: Path | None = None
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _spawned: dict[str, int] = field(default_factory=dict)
    _made: bool = False

    def __post_init__(self) -> None:
        if not self.prefix.isalnum() or len(self.prefix) > _MAX_PREFIX:
            raise ValueError(f"prefix {self.prefix!r}: use up to {_MAX_PREFIX} letters/digits")
        names = [host.name for host in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be unique: {names}")
        network = ipaddress.ip_network(self.subnet)
        if network.num_addresses < len(self.hosts) + 12:
            raise ValueError(f"subnet {self.subnet} is too small for {len(self.hosts)} hosts")
        self._network = network
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-logs-"))

    # ---- addresses -------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def gateway(self) -> str:
        """The bridge's address: how the root namespace reaches the hosts."""
        return str(self._network.network_address + 1)

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        """The host's IPv4 address on the bridge."""
        return str(self._network.network_address + 10 + self._index(host))

    def _index(self, host: str) -> int:
        for index, candidate in enumerate(self.hosts):
            if candidate.name == host:
                return index
        raise KeyError(f"no host {host!r}; hosts: {[h.name for h in self.hosts]}")

    # ---- making and removing -----------------------------------------------------------
    def __enter__(self) -> ShapedNetwork:
        self.create()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def create(self) -> None:
        """Make the bridge, the namespaces, the shaped veth pairs and the addresses."""
        if namespaces(self.prefix) or links(self.prefix):
            raise NetnsError(
                f"namespaces or links named {self.prefix}* exist already: another "
                f"run is using the prefix, or a killed one left them; "
                f"`python -m pac.cluster.netns cleanup --prefix {self.prefix}`"
            )
        self._check_subnet_is_free()
        self._made = True
        atexit.register(self.close)
        try:
            prefix_len = self._network.prefixlen
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.gateway}/{prefix_len}", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            for index, host in enumerate(self.hosts):
                self._add_host(index, host, prefix_len)
        except BaseException:
            self.close()
            raise

    def _check_subnet_is_free(self) -> None:
        routes = _run(["ip", "-o", "-4", "route", "show"], check=False).stdout.splitlines()
        for route in routes:
            destination = route.split()[0]
            if destination == "default":
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.ip_network(destination, strict=False).overlaps(self._network):
                    raise NetnsError(
                        f"subnet {self.subnet} overlaps the route '{route}': pass another subnet"
                    )

    def _add_host(self, index: int, host: Host, prefix_len: int) -> None:
        namespace, outer, inner = (
            self.namespace(host.name),
            f"{self.prefix}h{index}",
            f"{self.prefix}n{index}",
        )
        _run(["ip", "netns", "add", namespace])
        _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
        _run(["ip", "link", "set", inner, "netns", namespace])
        _run(["ip", "link", "set", outer, "master", self.bridge])
        _run(["ip", "link", "set", outer, "up"])
        in_ns = ["ip", "netns", "exec", namespace]
        _run([*in_ns, "ip", "link", "set", "lo", "up"])
        _run([*in_ns, "ip", "link", "set", inner, "name", "eth0"])
        _run(
            [*in_ns, "ip", "addr", "add", f"{self.address(host.name)}/{prefix_len}", "dev", "eth0"]
        )
        _run([*in_ns, "ip", "link", "set", "eth0", "up"])
        tbf = [
            "root",
            "tbf",
            "rate",
            f"{host.rate_mbit:g}mbit",
            "burst",
            host.burst,
            "latency",
            f"{host.latency_ms}ms",
        ]
        _run(["tc", "qdisc", "add", "dev", outer, *tbf])  # towards the host
        _run([*in_ns, "tc", "qdisc", "add", "dev", "eth0", *tbf])  # from the host

    def close(self) -> None:
        """Stop every process started here, then remove the namespaces and links."""
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for process in self._processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5.0)
        self._processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._made:
            cleanup(self.prefix)
            self._made = False
        atexit.unregister(self.close)

    # ---- processes ---------------------------------------------------------------------
    def spawn(
        self, host: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the host's namespace (its own process group; stdout and stderr
        to ``log_path(host, n)`` for the host's n-th process); ``close`` stops it."""
        self._index(host)
        index = self._spawned.get(host, 0)
        self._spawned[host] = index + 1
        log = self.log_path(host, index).open("wb")
        self._logs.append(log)
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace(host), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._processes.append(process)
        return process

    def log_path(self, host: str, index: int = 0) -> Path:
        assert self.log_dir is not None
        return self.log_dir / f"{host}-{index}.log"

    def wait_for_port(
        self,
        host: str,
        port: int,
        timeout: float = 60.0,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        """Block until ``address(host):port`` accepts TCP from the root namespace."""
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.address(host), port), timeout=1.0),
            ):
                return
            if process is not None and process.poll() is not None:
                raise NetnsError(
                    f"the process on {host} exited ({process.returncode}) before "
                    f"port {port} opened; see {self.log_dir}"
                )
            if time.monotonic() > deadline:
                raise NetnsError(
                    f"{host}:{port} did not open within {timeout:.0f} s; see {self.log_dir}"
                )
            time.sleep(0.2)


def write_prometheus_targets(path: Path, targets: Iterable[tuple[str, str, str]]) -> None:
    """A Prometheus file_sd file: ``(job, "host:port", device)`` per target."""
    groups = [
        {"targets": [address], "labels": {"job": job, "device": device}}
        for job, address, device in targets
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=2))
    tmp.replace(path)  # Prometheus rereads on change: never show it half a file


# ---- the command line ------------------------------------------------------------------
MESH_HOST = "mesh"
COORDINATOR_PORT, PLANNER_PORT, AGENT_PORT, REST_PORT = 50051, 50071, 50061, 8080
COORDINATOR_METRICS, AGENT_METRICS = 9100, 9101


def parse_agent(spec: str) -> Host:
    """``jetson-1`` or ``jetson-1:100`` (Mbit/s) -> a Host."""
    name, _, rate = spec.partition(":")
    try:
        return Host(name, float(rate)) if rate else Host(name)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r}: use NAME or NAME:MBIT") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "cleanup"], nargs="?", default="up")
    parser.add_argument(
        "--agent",
        dest="agents",
        type=parse_agent,
        action="append",
        help="an agent NAME[:MBIT] (repeat; default: two agents at 1000)",
    )
    parser.add_argument(
        "--mesh-rate",
        type=float,
        default=1000.0,
        help="Mbit/s of the coordinator and planner's namespace",
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--subnet", default=DEFAULT_SUBNET)
    parser.add_argument("--join-token", default=os.environ.get("PAC_JOIN_TOKEN", "netns-mesh"))
    parser.add_argument(
        "--placement",
        default="local",
        help="the coordinator's driver for jobs that name none (local, mesh)",
    )
    parser.add_argument(
        "--agent-threads",
        type=int,
        default=None,
        help="torch threads per agent (default: the agent's own)",
    )
    parser.add_argument(
        "--start-timeout", type=float, default=120.0, help="seconds each service may take to start"
    )
    parser.add_argument(
        "--prometheus-targets",
        type=Path,
        default=Path("/tmp/pac-prometheus/netns.json"),
        help="file_sd file for docker/prometheus-local.yml",
    )


@dataclass(frozen=True)
class MeshService:
    """One process of the mesh: where it runs, its command, the ports that mean it is up."""

    host: str
    argv: list[str]
    ports: tuple[int, ...]


def mesh_services(
    net: ShapedNetwork,
    agents: Sequence[Host],
    work_dir: Path,
    placement: str = "local",
    agent_threads: int | None = None,
) -> list[MeshService]:
    """The planner and the coordinator (in ``MESH_HOST``) and one agent per agent host."""
    pac = [sys.executable, "-m", "pac.cli"]
    mesh = net.address(MESH_HOST)
    services = [
        MeshService(
            MESH_HOST, [*pac, "planner", f"--listen={mesh}:{PLANNER_PORT}"], (PLANNER_PORT,)
        ),
        MeshService(
            MESH_HOST,
            [
                *pac,
                "coordinator",
                f"--listen={mesh}:{COORDINATOR_PORT}",
                f"--rest={mesh}:{REST_PORT}",
                f"--metrics-port={COORDINATOR_METRICS}",
                f"--state={work_dir / 'state'}",
                f"--placement={placement}",
                "--insecure",
            ],
            (COORDINATOR_PORT, REST_PORT, COORDINATOR_METRICS),
        ),
    ]
    for agent in agents:
        address = net.address(agent.name)
        services.append(
            MeshService(
                agent.name,
                [
                    *pac,
                    "agent",
                    f"--coordinator={mesh}:{COORDINATOR_PORT}",
                    f"--name={agent.name}",
                    f"--listen={address}:{AGENT_PORT}",
                    f"--advertise={address}:{AGENT_PORT}",
                    f"--metrics-port={AGENT_METRICS}",
                    f"--cache-dir={work_dir / agent.name}",
                    "--insecure",
                    *([f"--threads={agent_threads}"] if agent_threads else []),
                ],
                (AGENT_PORT, AGENT_METRICS),
            )
        )
    return services


def run(args: argparse.Namespace) -> int:
    if args.action == "cleanup":
        cleanup(args.prefix)
        return 0
    agents = args.agents or [Host("agent-1"), Host("agent-2")]
    hosts = [Host(MESH_HOST, args.mesh_rate), *agents]
    # SIGTERM ends the run like Ctrl-C, so the finally below removes everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    work_dir = Path(tempfile.mkdtemp(prefix="pac-netns-"))
    env = {**os.environ, "PAC_JOIN_TOKEN": args.join_token}
    try:
        with ShapedNetwork(hosts, args.prefix, args.subnet) as net:
            # All at once: agents retry registering until the coordinator is up.
            services = mesh_services(net, agents, work_dir, args.placement, args.agent_threads)
            processes = [net.spawn(service.host, service.argv, env=env) for service in services]
            for service, process in zip(services, processes, strict=True):
                for port in service.ports:
                    net.wait_for_port(service.host, port, args.start_timeout, process)
            mesh = net.address(MESH_HOST)
            write_prometheus_targets(
                args.prometheus_targets,
                [
                    ("pac-coordinator", f"{mesh}:{COORDINATOR_METRICS}", MESH_HOST),
                    *[
                        ("pac-agent", f"{net.address(a.name)}:{AGENT_METRICS}", a.name)
                        for a in agents
                    ],
                ],
            )
            print(
                f"coordinator {mesh}:{COORDINATOR_PORT} rest http://{mesh}:{REST_PORT} "
                f"planner {mesh}:{PLANNER_PORT} logs {net.log_dir}",
                flush=True,
            )
            for agent in agents:
                print(
                    f"agent {agent.name} {net.address(agent.name)}:{AGENT_PORT} "
                    f"{agent.rate_mbit:g} Mbit/s",
                    flush=True,
                )
            print("Ctrl-C stops the mesh and removes the namespaces", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    except NetnsError as error:
        print(f"pac netns: {error}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(OSError):
            args.prometheus_targets.unlink()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pac.cluster.netns", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
