"""Cap a process at a share of the machine's CPU, as a device with that many cores has.

The local mesh emulates a household of devices on one machine. Without a cap, an agent
that waits (a pipeline stage in its bubble, a device with no rows) hands its core to the
agents that compute, which no set of separate devices can do: four agents on two cores
run a pipeline as if it had no bubbles. A cgroup with a CFS bandwidth quota (what docker's
``cpus:`` and systemd's ``CPUQuota=`` set) gives each agent at most ``cores`` CPUs of time
per period, whether or not the others use theirs: ``pac cluster up --agent-cpu-quota 0.5``
on two cores emulates four devices of half a core each, as ``docker-compose.yml`` does
with ``cpus:``.

Both cgroup versions: v2 (``cpu.max``, in the unified hierarchy where the ``cpu``
controller is available) and v1 (``cpu.cfs_quota_us`` in the hierarchy mounted with
``cpu``). Creating a cgroup needs write access to the hierarchy (root, or a delegated
subtree); :class:`CpuQuotaError` says what is missing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The quota's period. With the kernel's default (100 ms) a half-core agent runs 50 ms, then
# stops 50 ms: a message that arrives in the stopped half waits for the next period, which
# no slower device does. 10 ms keeps those waits within 5 ms.
PERIOD_US = 10_000
MOUNTS = Path("/proc/self/mounts")
GROUP = "pac-mesh"  # every quota's cgroup lives under this one


class CpuQuotaError(RuntimeError):
    """No cgroup hierarchy with the cpu controller, or no right to write to it."""


@dataclass(frozen=True)
class CpuHierarchy:
    """A mounted cgroup hierarchy that has the cpu controller: its version and root."""

    version: int
    root: Path


def cpu_hierarchy(mounts: Path = MOUNTS) -> CpuHierarchy:
    """The hierarchy to put quotas in: v2 where its root offers the cpu controller, else
    the v1 hierarchy mounted with ``cpu``."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError as error:
        raise CpuQuotaError(f"cannot read {mounts}: {error}") from None
    v1: CpuHierarchy | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        root, kind, options = Path(fields[1]), fields[2], fields[3].split(",")
        if kind == "cgroup2":
            with contextlib.suppress(OSError):
                if "cpu" in (root / "cgroup.controllers").read_text().split():
                    return CpuHierarchy(2, root)
        elif kind == "cgroup" and "cpu" in options and v1 is None:
            v1 = CpuHierarchy(1, root)
    if v1 is None:
        raise CpuQuotaError(
            "no cgroup hierarchy with the cpu controller is mounted (neither a cgroup2 "
            f"root offering cpu nor a cgroup v1 'cpu' mount in {mounts}): a CPU quota "
            "cannot be set on this machine"
        )
    return v1


def quota_us(cores: float) -> int:
    """The quota per :data:`PERIOD_US` of ``cores`` CPUs (at least the kernel's 1 ms: a
    tenth of a core)."""
    if not cores > 0:
        raise CpuQuotaError(f"a CPU quota must be a positive number of cores, not {cores}")
    return max(1000, round(cores * PERIOD_US))


class CpuQuota:
    """One cgroup named ``name`` under :data:`GROUP`, capped at ``cores`` CPUs."""

    def __init__(self, name: str, cores: float, hierarchy: CpuHierarchy | None = None) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise CpuQuotaError(f"a cgroup name is one path component, not {name!r}")
        self.cores = cores
        self.quota = quota_us(cores)
        self.hierarchy = hierarchy or cpu_hierarchy()
        self.path = self.hierarchy.root / GROUP / name

    def create(self) -> CpuQuota:
        """Make the cgroup (again, if it is left from an earlier run) and set its quota."""
        try:
            if self.hierarchy.version == 2:
                self.path.mkdir(parents=True, exist_ok=True)
                # A child's cpu files exist only where its parents hand the controller down.
                for parent in (self.hierarchy.root, self.path.parent):
                    (parent / "cgroup.subtree_control").write_text("+cpu")
                (self.path / "cpu.max").write_text(f"{self.quota} {PERIOD_US}")
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(self.quota))
        except OSError as error:
            raise CpuQuotaError(
                f"cannot set a CPU quota in {self.path}: {error}. Capping a process's CPU "
                "needs write access to the cgroup hierarchy (run as root, or in a "
                "delegated cgroup)"
            ) from None
        return self

    def pids(self) -> list[int]:
        """The processes in the cgroup now."""
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def cores_allowed(self) -> float:
        """The quota as the kernel holds it, in cores (``inf`` where it is unlimited)."""
        cores = _cores_of(self.hierarchy, self.path)
        return float("inf") if cores is None else cores

    def remove(self) -> None:
        """Delete the cgroup (:func:`remove_cgroup`)."""
        remove_cgroup(self.path)


def in_cgroup(path: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` run in the cgroup at ``path``: a shell moves itself there, then execs it,
    so that the process computes under the quota from its first instruction (its device
    measurement at start included)."""
    script = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
    return ["/bin/sh", "-c", script, "sh", str(path), *argv]


def remove_cgroup(path: Path) -> None:
    """Delete a quota's cgroup once its processes have ended (the kernel refuses one that
    still holds a process: it stays), and :data:`GROUP` with the last one. A missing cgroup
    is no error."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return  # still in use
    if path.parent.name == GROUP:
        with contextlib.suppress(OSError):
            path.parent.rmdir()


@dataclass(frozen=True)
class OwnQuota:
    """The CPU quota a process computes under: its cgroup (the path as the process sees
    it) and the cores it may use."""

    cgroup: str
    cores: float


def own_quota(
    proc_cgroup: Path = Path("/proc/self/cgroup"), mounts: Path = MOUNTS
) -> OwnQuota | None:
    """This process's CPU quota: the tightest finite quota of its cpu cgroup and the
    cgroups above it (a docker container's ``cpus:`` sits on the container's), or None
    where none is set or none can be read."""
    try:
        hierarchy = cpu_hierarchy(mounts)
        lines = proc_cgroup.read_text().splitlines()
    except (CpuQuotaError, OSError):
        return None
    own = None
    for line in lines:
        number, controllers, path = line.split(":", 2)
        unified = number == "0" and not controllers
        if unified if hierarchy.version == 2 else "cpu" in controllers.split(","):
            own = path
    if own is None:
        return None
    tightest: float | None = None
    group = Path(own)
    while True:
        cores = _cores_of(hierarchy, hierarchy.root / group.relative_to("/"))
        if cores is not None and (tightest is None or cores < tightest):
            tightest = cores
        if group == group.parent:
            break
        group = group.parent
    return None if tightest is None else OwnQuota(own, tightest)


def _cores_of(hierarchy: CpuHierarchy, path: Path) -> float | None:
    """The finite quota of the cgroup at ``path`` in cores, else None."""
    try:
        if hierarchy.version == 2:
            quota, period = (path / "cpu.max").read_text().split()
        else:
            quota = (path / "cpu.cfs_quota_us").read_text().strip()
            period = (path / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1"):
        return None
    return int(quota) / int(period)
