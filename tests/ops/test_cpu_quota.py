"""Agents capped at a share of the CPU (pac.cluster.cpu_quota): a cgroup quota per agent, so
that the local mesh's agents compute as separate devices do, and each reports a CPU pool of
its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.device import cpu_pool, quota_cores, usable_cpus
from pac.cluster.cpu_quota import (
    PERIOD_US,
    CpuHierarchy,
    CpuQuota,
    CpuQuotaError,
    OwnQuota,
    cpu_hierarchy,
    in_cgroup,
    own_quota,
    quota_us,
)
from pac.cluster.local_mesh import LocalMesh, MeshError


def _mounts(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "mounts"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_the_hierarchy_with_the_cpu_controller_is_found_in_the_mounts(tmp_path: Path) -> None:
    unified, legacy = tmp_path / "unified", tmp_path / "cpu"
    unified.mkdir()
    legacy.mkdir()
    (unified / "cgroup.controllers").write_text("memory pids\n")
    both = _mounts(
        tmp_path,
        [
            "proc /proc proc rw 0 0",
            f"cgroup2 {unified} cgroup2 rw,relatime 0 0",
            f"cgroup {tmp_path / 'memory'} cgroup rw,memory 0 0",
            f"cgroup {legacy} cgroup rw,relatime,cpu 0 0",
        ],
    )
    # v2 lacks the cpu controller here: the v1 cpu hierarchy is the one.
    assert cpu_hierarchy(both) == CpuHierarchy(1, legacy)
    (unified / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cpu_hierarchy(both) == CpuHierarchy(2, unified)
    neither = _mounts(tmp_path, [f"cgroup {tmp_path / 'memory'} cgroup rw,memory 0 0"])
    with pytest.raises(CpuQuotaError, match="no cgroup hierarchy with the cpu controller"):
        cpu_hierarchy(neither)


@pytest.mark.parametrize("version", [1, 2])
def test_a_quota_is_written_as_each_cgroup_version_wants(tmp_path: Path, version: int) -> None:
    quota = CpuQuota("agent-0", 0.5, CpuHierarchy(version, tmp_path)).create()
    assert quota.path == tmp_path / "pac-mesh" / "agent-0"
    if version == 2:
        assert (quota.path / "cpu.max").read_text() == f"{PERIOD_US // 2} {PERIOD_US}"
        # The controller is handed down from the root to the quota's cgroup.
        assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
        assert (tmp_path / "pac-mesh" / "cgroup.subtree_control").read_text() == "+cpu"
    else:
        assert (quota.path / "cpu.cfs_quota_us").read_text() == str(PERIOD_US // 2)
        assert (quota.path / "cpu.cfs_period_us").read_text() == str(PERIOD_US)
    assert quota.cores_allowed() == 0.5


def test_bad_quotas_and_names_are_refused(tmp_path: Path) -> None:
    hierarchy = CpuHierarchy(1, tmp_path)
    for cores in (0, -1.0, float("nan")):
        with pytest.raises(CpuQuotaError, match="positive number of cores"):
            CpuQuota("a", cores, hierarchy)
    for name in ("", "a/b", ".."):
        with pytest.raises(CpuQuotaError, match="one path component"):
            CpuQuota(name, 1.0, hierarchy)
    assert quota_us(0.001) == 1000  # the kernel's least quota
    assert quota_us(2) == 2 * PERIOD_US
    with pytest.raises(MeshError, match="number of cores"):
        LocalMesh(agents=1, run_dir=tmp_path / "mesh", agent_cpu_quota=-0.5)


@pytest.mark.parametrize("version", [1, 2])
def test_a_process_reads_the_tightest_quota_above_it(tmp_path: Path, version: int) -> None:
    root = tmp_path / "root"
    inner = root / "house" / "agent"
    inner.mkdir(parents=True)
    if version == 2:
        (root / "cgroup.controllers").write_text("cpu\n")
        mounts = _mounts(tmp_path, [f"cgroup2 {root} cgroup2 rw 0 0"])
        (root / "house" / "cpu.max").write_text("150000 100000\n")
        (inner / "cpu.max").write_text("max 100000\n")
        proc = "0::/house/agent\n"
    else:
        mounts = _mounts(tmp_path, [f"cgroup {root} cgroup rw,cpu,cpuacct 0 0"])
        for group, quota in ((root / "house", "150000"), (inner, "-1")):
            (group / "cpu.cfs_quota_us").write_text(quota + "\n")
            (group / "cpu.cfs_period_us").write_text("100000\n")
        proc = "4:memory:/elsewhere\n3:cpu,cpuacct:/house/agent\n"
    (tmp_path / "cgroup").write_text(proc)
    found = own_quota(tmp_path / "cgroup", mounts)
    assert found is not None and found.cgroup == "/house/agent" and found.cores == 1.5
    # No quota anywhere above it: none.
    if version == 2:
        (root / "house" / "cpu.max").write_text("max 100000\n")
    else:
        (root / "house" / "cpu.cfs_quota_us").write_text("-1\n")
    assert own_quota(tmp_path / "cgroup", mounts) is None


def test_a_process_started_in_a_quota_computes_under_it(needs_root: None) -> None:
    """On this machine's own cgroup hierarchy (CI runs as root): the process is in the
    cgroup from its start, reads its quota and names a CPU pool of its own."""
    try:
        quota = CpuQuota(f"test-{os.getpid()}", 0.25).create()
    except CpuQuotaError as error:
        pytest.fail(f"root cannot set a CPU quota here: {error}")
    script = (
        "import os; from pac.cluster.cpu_quota import own_quota; q = own_quota(); "
        "print(os.getpid(), q.cgroup, q.cores, open(os.environ['PROCS']).read().split())"
    )
    try:
        done = subprocess.run(
            in_cgroup(quota.path, [sys.executable, "-c", script]),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PROCS": str(quota.path / "cgroup.procs")},
            cwd=Path(__file__).resolve().parents[2],
        )
        pid, cgroup, cores, procs = done.stdout.split(" ", 3)
        assert cgroup.endswith(f"/pac-mesh/{quota.path.name}") and float(cores) == 0.25
        assert f"'{pid}'" in procs  # it was in the cgroup while it ran
        # An agent there counts one core, in a pool of its own.
        read = OwnQuota(cgroup, float(cores))
        assert quota_cores(usable_cpus(), read) == 1
        assert cpu_pool(usable_cpus(), read).endswith(f":cgroup={cgroup}")
        assert cpu_pool(usable_cpus(), read) != cpu_pool(usable_cpus())
    finally:
        quota.remove()
    assert not quota.path.exists()


def test_a_capped_mesh_starts_every_agent_in_its_own_quota(
    needs_root: None, tmp_path: Path
) -> None:
    with LocalMesh(agents=2, run_dir=tmp_path / "mesh", planner=False, agent_cpu_quota=0.5) as mesh:
        agents = [mesh.services[name] for name in mesh.agent_names()]
        cgroups = [Path(agent.cgroup) for agent in agents]
        assert len(set(cgroups)) == 2
        for agent, cgroup in zip(agents, cgroups, strict=True):
            quota = CpuQuota(cgroup.name, 0.5)
            assert quota.path == cgroup and quota.cores_allowed() == 0.5
            assert agent.pid in quota.pids()
        profiles = {a.name: a.profile for a in mesh.status()}
        pools = {p.cpu_pool for p in profiles.values()}
        assert len(pools) == 2 and all(":cgroup=/" in pool for pool in pools), pools
        assert all(p.cpu_cores == 1 for p in profiles.values())
    assert not any(cgroup.exists() for cgroup in cgroups)  # removed with the mesh
