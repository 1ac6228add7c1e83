"""What this device is: measured once when the agent starts, reported in its profile."""

from __future__ import annotations

import math
import os
import platform
import shutil
import socket
import time
from pathlib import Path

import torch

from pac.cluster.cpu_quota import OwnQuota, own_quota
from protos.v1 import agent_pb2


def pick_device() -> torch.device:
    """CUDA (a Jetson, a GPU laptop), else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _meminfo(field: str) -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_bytes() -> tuple[int, int]:
    """(total, available) physical memory in bytes."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, _meminfo("MemAvailable") or total


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> list[int]:
    """The CPU cores this process may run on (its affinity; every core where the
    platform cannot say)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return sorted(affinity(0))
    return list(range(os.cpu_count() or 1))


def _ranges(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    runs: list[list[int]] = []
    for cpu in cpus:
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def parse_cpus(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``; a ValueError says what is wrong."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"{part!r} is not a core or a range of cores like 0-3") from None
        if low < 0 or high < low:
            raise ValueError(f"{part!r} is not a range of cores like 0-3")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def pin_to_cpus(text: str) -> list[int]:
    """Run this process (its threads started from now on) on the cores ``text`` names
    (:func:`parse_cpus`); returns them. OSError when the machine lacks one."""
    cpus = parse_cpus(text)
    setter = getattr(os, "sched_setaffinity", None)
    if setter is None:
        raise OSError("this platform cannot pin a process to cores")
    setter(0, cpus)
    return cpus


def cpu_pool(cpus: list[int], quota: OwnQuota | None = None) -> str:
    """The name of the cores this agent computes on: the machine and the cores
    (``"laptop:cpus=0-3"``). Agents with the same name share those cores. An agent under a
    CPU quota (``quota``: a cgroup's, e.g. ``pac cluster up --agent-cpu-quota``) computes
    on its quota's share whatever its neighbours do, as a device of its own: its pool is
    its cgroup (``"laptop:cgroup=/pac-mesh/x"``), shared only with the processes in it."""
    if quota is not None:
        return f"{socket.gethostname()}:cgroup={quota.cgroup}"
    return f"{socket.gethostname()}:cpus={_ranges(cpus)}"


def quota_cores(cpus: list[int], quota: OwnQuota | None) -> int:
    """The whole cores an agent computes on: its usable cores, or its quota's (at least
    one) where that is fewer."""
    if quota is None:
        return len(cpus)
    return max(1, min(len(cpus), math.ceil(quota.cores)))


def matmul_gflops(device: torch.device, size: int = 512, budget_s: float = 0.25) -> float:
    """float32 ``[size, size] @ [size, size]`` throughput in GFLOP/s, timed for about
    ``budget_s`` after one warm-up."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    runs = 0
    started = time.perf_counter()
    while True:
        torch.mm(a, b)
        runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if elapsed >= budget_s:
            return 2 * size**3 * runs / elapsed / 1e9


def measure_device(
    name: str, address: str, cache_dir: Path, benchmark_s: float = 0.25
) -> agent_pb2.DeviceProfile:
    """Cores, memory, free disk under ``cache_dir``, accelerator and a matmul benchmark."""
    device = pick_device()
    total, available = memory_bytes()
    cache_dir.mkdir(parents=True, exist_ok=True)
    accelerator_name = _cpu_name()
    accelerator_memory = total
    cpus = usable_cpus()
    quota = own_quota()
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(0)
        accelerator_name, accelerator_memory = properties.name, properties.total_memory
    return agent_pb2.DeviceProfile(
        name=name,
        address=address,
        cpu_cores=quota_cores(cpus, quota),
        threads=torch.get_num_threads(),
        memory_bytes=total,
        available_memory_bytes=available,
        free_disk_bytes=shutil.disk_usage(cache_dir).free,
        accelerator=device.type,
        accelerator_name=accelerator_name,
        accelerator_memory_bytes=accelerator_memory,
        matmul_gflops=matmul_gflops(device, budget_s=benchmark_s),
        torch_version=torch.__version__,
        cpu_pool=cpu_pool(cpus, quota),
    )
