"""The local mesh: a planner, a coordinator and N agents as processes on loopback.

    with LocalMesh(agents=2, run_dir=tmp) as mesh:
        mesh.coordinator_address       # "127.0.0.1:50051"
        mesh.status()                  # the agents as the coordinator lists them

Each process has its own log file, cache directory and metrics port under ``run_dir``;
agents get ``max(1, cores // (agents + 1))`` torch threads each so that they (and the
coordinator) share the machine fairly; ``agent_cpu_quota`` caps each agent at that many CPUs
instead, so that each computes as a device of its own (:mod:`pac.cluster.cpu_quota`). The
mesh is plaintext with a join token generated into ``run_dir/join-token``, and described in
``run_dir/cluster.json`` (pids, addresses, ports) so that ``pac cluster down`` in another
shell can stop it. ``pac cluster up`` is this class; tests use it the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from pac.cluster.cpu_quota import (
    CpuHierarchy,
    CpuQuota,
    CpuQuotaError,
    cpu_hierarchy,
    in_cgroup,
    remove_cgroup,
)
from pac.wire.auth import token_metadata
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc

CLUSTER_FILE = "cluster.json"
TOKEN_FILE = "join-token"
HOST = "127.0.0.1"


def scrape_metrics(port: int) -> dict[str, float]:
    """Every sample of a service's Prometheus ``/metrics`` page on loopback ``port``: the
    sample's name with its labels as written (``pac_agent_peak_rss_bytes{since="start"}``)
    -> value."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as page:
        text = page.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


class MeshError(RuntimeError):
    """A mesh process did not start (its log's tail says why) or the run dir is wrong."""


@dataclass
class Service:
    """One process of the mesh: how it was started, where it listens, its log."""

    name: str
    role: str  # "planner", "coordinator" or "agent"
    argv: list[str]
    log: str
    address: str
    ports: dict[str, int]
    pid: int = 0
    # Process start time (clock ticks since boot): a pid reused by another program after
    # a reboot or a crash is not ours to signal.
    start_ticks: int = 0
    # The cgroup that caps its CPU (pac.cluster.cpu_quota), "" = none: removed when it stops.
    cgroup: str = ""

    def describe(self) -> str:
        extra = " ".join(f"{kind} {port}" for kind, port in self.ports.items() if kind != "grpc")
        return f"{self.name:<12} pid {self.pid:<7} grpc {self.address}  {extra}  log {self.log}"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on loopback right now (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_agent(agents: int, cores: int | None = None) -> int:
    """Torch threads of each agent: the cores shared by the agents and the coordinator."""
    return max(1, (cores or available_cores()) // (agents + 1))


def _stat(pid: int) -> list[str]:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...); [] where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rpartition(")")[2].split()


def _start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat (0 where there is no /proc)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else 0


def _alive(service: Service) -> bool:
    """True if the service's process runs (a zombie has ended; a reused pid is not it)."""
    if service.pid <= 0:
        return False
    if not Path("/proc").is_dir():
        try:
            os.kill(service.pid, 0)
        except OSError:
            return False
        return True
    fields = _stat(service.pid)
    return bool(fields) and fields[0] != "Z" and int(fields[19]) == service.start_ticks


def _tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalMesh:
    """``agents`` agents, a coordinator and (if installed) a planner under ``run_dir``.

    ``base_port`` None picks free ports; else the coordinator serves gRPC on it, REST on
    +1, metrics on +2, the planner on +3, and agent i on +10+2i (metrics +11+2i).
    """

    agents: int = 2
    run_dir: Path = field(default_factory=lambda: Path("pac-mesh"))
    base_port: int | None = None
    threads: int | None = None
    # The cores every agent computes on (``pac agent --cpus``; "" = the mesh's own).
    agent_cpus: str = ""
    # At most this many CPUs of time per agent (a cgroup quota, pac.cluster.cpu_quota: each
    # agent computes as a device of that many cores would, whatever the others do); 0 = no cap.
    agent_cpu_quota: float = 0.0
    heartbeat_interval_s: float = 1.0
    missed_heartbeats: int = 3
    planner: bool = True
    coordinator_args: Sequence[str] = ()
    ready_timeout_s: float = 90.0
    python: str = sys.executable
    services: dict[str, Service] = field(default_factory=dict)
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    _hierarchy: CpuHierarchy | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).absolute()
        if self.agents < 1:
            raise MeshError("a mesh needs at least one agent (--agents 1)")
        if self.agent_cpu_quota < 0:
            raise MeshError(
                f"an agent's CPU quota is a number of cores (0 = none), not {self.agent_cpu_quota}"
            )
        self._hierarchy = cpu_hierarchy_or_error() if self.agent_cpu_quota else None
        if self.threads is None:
            self.threads = threads_per_agent(self.agents)
            if self.agent_cpu_quota:  # no more threads than the quota's cores
                self.threads = max(1, min(self.threads, int(self.agent_cpu_quota)))

    # ---- addresses ---------------------------------------------------------------------
    @property
    def coordinator(self) -> Service:
        return self.services["coordinator"]

    @property
    def coordinator_address(self) -> str:
        return self.coordinator.address

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.coordinator.ports['rest']}"

    @property
    def token_file(self) -> Path:
        return self.run_dir / TOKEN_FILE

    @property
    def join_token(self) -> str:
        return self.token_file.read_text().strip()

    def agent_names(self) -> list[str]:
        return [f"agent-{index}" for index in range(self.agents)]

    # ---- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> LocalMesh:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> None:
        """Start everything, wait until every agent is registered, write cluster.json."""
        if (self.run_dir / CLUSTER_FILE).exists():
            raise MeshError(
                f"{self.run_dir / CLUSTER_FILE} exists: a mesh may be running "
                f"there; run `pac cluster down --dir {self.run_dir}` first"
            )
        for folder in ("logs", "state", "cache"):
            (self.run_dir / folder).mkdir(parents=True, exist_ok=True)
        if not self.token_file.exists():
            self.token_file.write_text(secrets.token_hex(16) + "\n")
            self.token_file.chmod(0o600)
        self._plan_services()
        if "planner" in self.services:
            self._start("planner")
        self._start("coordinator")
        self._wait_listening(self.coordinator)
        for name in self.agent_names():
            self._start(name)
        self.wait_for_agents(self.agent_names())
        if "planner" in self.services:
            self._wait_listening(self.services["planner"])
        self._write_description()

    def down(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every process (agents first), SIGKILL those still there after
        ``timeout_s``; remove cluster.json. Logs, state and caches stay."""
        order = [s for s in self.services.values() if s.role == "agent"] + [
            s for s in self.services.values() if s.role != "agent"
        ]
        stop_services(order, self._processes, timeout_s)
        (self.run_dir / CLUSTER_FILE).unlink(missing_ok=True)

    # ---- single processes (tests stop and start them) ----------------------------------
    def stop(self, name: str, timeout_s: float = 10.0) -> int | None:
        """Stop one process (SIGTERM, then SIGKILL); its exit code if it was our child."""
        service = self.services[name]
        stop_services([service], self._processes, timeout_s)
        process = self._processes.pop(name, None)
        return process.returncode if process is not None else None

    def start(self, name: str) -> None:
        """(Re)start one process with its original command line, ports and log."""
        self._start(name)
        if self.services[name].role != "agent":
            self._wait_listening(self.services[name])
        self._write_description()

    def signal(self, name: str, signum: int) -> None:
        os.kill(self.services[name].pid, signum)

    # ---- the coordinator's view --------------------------------------------------------
    def status(self, include_lost: bool = False) -> list[pb.AgentInfo]:
        """The agents as the coordinator lists them."""
        with grpc.insecure_channel(self.coordinator_address) as channel:
            reply = pb_grpc.CoordinatorStub(channel).ListAgents(
                pb.ListAgentsRequest(include_lost=include_lost),
                metadata=token_metadata(self.join_token),
                timeout=5,
            )
        return list(reply.agents)

    def wait_for(
        self, condition: Callable[[], bool], what: str, timeout_s: float | None = None
    ) -> None:
        """Poll ``condition`` until it holds; MeshError naming ``what`` (and any process
        that died meanwhile) when it does not within the timeout."""
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        while True:
            try:
                if condition():
                    return
            except grpc.RpcError:
                pass  # not serving yet
            self._check_running()
            if time.monotonic() > deadline:
                raise MeshError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def wait_for_agents(self, names: Sequence[str], timeout_s: float | None = None) -> None:
        """Wait until every agent in ``names`` is registered and alive."""

        def registered() -> bool:
            alive = {a.name for a in self.status() if a.state == pb.AGENT_STATE_ALIVE}
            return set(names) <= alive

        self.wait_for(registered, f"agents {', '.join(names)} to register", timeout_s)

    # ---- internals ---------------------------------------------------------------------
    def _plan_services(self) -> None:
        count = 4 + 2 * self.agents
        if self.base_port is None:
            ports = free_ports(count)
        else:
            ports = [
                self.base_port + offset
                for offset in (0, 1, 2, 3, *[10 + i for i in range(2 * self.agents)])
            ]
        logs = self.run_dir / "logs"
        pac = [self.python, "-m", "pac.cli"]
        token = f"--join-token-file={self.token_file}"
        grpc_port, rest_port, metrics_port, planner_port = ports[:4]
        if self.planner and _has_command("planner"):
            self.services["planner"] = Service(
                "planner",
                "planner",
                [*pac, "planner", f"--listen={HOST}:{planner_port}"],
                str(logs / "planner.log"),
                f"{HOST}:{planner_port}",
                {"grpc": planner_port},
            )
        planner = (
            [f"--planner={self.services['planner'].address}"] if "planner" in self.services else []
        )
        self.services["coordinator"] = Service(
            "coordinator",
            "coordinator",
            [
                *pac,
                "coordinator",
                f"--listen={HOST}:{grpc_port}",
                f"--rest={HOST}:{rest_port}",
                f"--metrics-port={metrics_port}",
                f"--metrics-addr={HOST}",
                f"--state={self.run_dir / 'state'}",
                token,
                "--insecure",
                f"--heartbeat-interval={self.heartbeat_interval_s}",
                f"--missed-heartbeats={self.missed_heartbeats}",
                *planner,
                *self.coordinator_args,
            ],
            str(logs / "coordinator.log"),
            f"{HOST}:{grpc_port}",
            {"grpc": grpc_port, "rest": rest_port, "metrics": metrics_port},
        )
        for index, name in enumerate(self.agent_names()):
            port, metrics = ports[4 + 2 * index], ports[5 + 2 * index]
            self.services[name] = Service(
                name,
                "agent",
                [
                    *pac,
                    "agent",
                    f"--name={name}",
                    f"--listen={HOST}:{port}",
                    f"--coordinator={HOST}:{grpc_port}",
                    f"--metrics-port={metrics}",
                    f"--cache-dir={self.run_dir / 'cache' / name}",
                    token,
                    "--insecure",
                    f"--threads={self.threads}",
                    "--drain-seconds=5",
                    *([f"--cpus={self.agent_cpus}"] if self.agent_cpus else []),
                ],
                str(logs / f"{name}.log"),
                f"{HOST}:{port}",
                {"grpc": port, "metrics": metrics},
            )

    def _start(self, name: str) -> None:
        service = self.services[name]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
        }
        env.pop("PAC_JOIN_TOKEN", None)  # the token file is the mesh's
        argv = service.argv
        if service.role == "agent" and self._hierarchy is not None:
            quota = CpuQuota(
                f"{_mesh_id(self.run_dir)}-{name}", self.agent_cpu_quota, self._hierarchy
            )
            try:
                quota.create()
            except CpuQuotaError as error:
                raise MeshError(str(error)) from None
            service.cgroup = str(quota.path)
            argv = in_cgroup(quota.path, argv)
        with open(service.log, "ab") as log:
            # A session of its own: Ctrl-C in the shell that ran `pac cluster up` does not
            # reach the mesh, and `pac cluster down` stops it from anywhere.
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.run_dir,
                start_new_session=True,
            )
        self._processes[name] = process
        service.pid = process.pid
        service.start_ticks = _start_ticks(process.pid)

    def _check_running(self) -> None:
        for name, process in self._processes.items():
            code = process.poll()
            if code is not None:
                service = self.services[name]
                raise MeshError(
                    f"{name} exited with code {code} while starting; the end of "
                    f"{service.log}:\n{_tail(service.log)}"
                )

    def _wait_listening(self, service: Service) -> None:
        host, _, port = service.address.rpartition(":")

        def accepts() -> bool:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                return sock.connect_ex((host, int(port))) == 0

        self.wait_for(accepts, f"{service.name} to listen on {service.address}")

    def _write_description(self) -> None:
        description = {
            "run_dir": str(self.run_dir),
            "join_token_file": str(self.token_file),
            "insecure": True,
            "threads_per_agent": self.threads,
            "coordinator": {
                "address": self.coordinator_address,
                "rest": self.rest_url,
                "metrics_port": self.coordinator.ports["metrics"],
            },
            "services": [asdict(service) for service in self.services.values()],
        }
        path = self.run_dir / CLUSTER_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(description, indent=2) + "\n")
        temporary.replace(path)


def stop_services(
    services: Sequence[Service],
    children: dict[str, subprocess.Popen[bytes]] | None = None,
    timeout_s: float = 10.0,
) -> None:
    """SIGTERM (after SIGCONT, for a stopped one) each live service, wait up to
    ``timeout_s`` for all of them, then SIGKILL the rest; remove their CPU quotas' cgroups."""
    children = children or {}
    live = [service for service in services if _alive(service)]
    for service in live:
        for signum in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.kill(service.pid, signum)
            except ProcessLookupError:
                break
    deadline = time.monotonic() + timeout_s
    for service in live:
        child = children.get(service.name)
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                break
            if child is None and not _alive(service):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGKILL)
        if child is not None:
            child.wait()
    for service in services:  # (a dead one's too: an agent that crashed)
        if service.cgroup:
            gone = time.monotonic() + 2.0  # (a killed process takes a moment to leave it)
            while _alive(service) and time.monotonic() < gone:
                time.sleep(0.05)
            remove_cgroup(Path(service.cgroup))


def cpu_hierarchy_or_error() -> CpuHierarchy:
    """The cgroup hierarchy for agents' CPU quotas; MeshError where there is none."""
    try:
        return cpu_hierarchy()
    except CpuQuotaError as error:
        raise MeshError(str(error)) from None


def _mesh_id(run_dir: Path) -> str:
    """A short name of the mesh in ``run_dir`` (its agents' cgroups carry it)."""
    return hashlib.sha256(str(run_dir).encode()).hexdigest()[:10]


def load_services(run_dir: Path) -> list[Service]:
    """The services recorded in ``run_dir/cluster.json``."""
    path = Path(run_dir) / CLUSTER_FILE
    if not path.is_file():
        raise MeshError(
            f"{path} does not exist: no mesh was started there (pac cluster up --dir {run_dir})"
        )
    description = json.loads(path.read_text())
    return [Service(**service) for service in description["services"]]


def _has_command(name: str) -> bool:
    """True if this install offers ``pac NAME`` (the planner may not be installed)."""
    from importlib.util import find_spec

    from pac.cli import COMMANDS

    module = COMMANDS.get(name, ("",))[0]
    try:
        return bool(module) and find_spec(module) is not None
    except ModuleNotFoundError:
        return False
