"""The clock an agent's profile times its work by.

Wall time, except where the agent computes on one torch thread under a CPU quota (a
cgroup's: ``pac cluster up --agent-cpu-quota``, a container's ``cpus:``): there, the
profiling thread's CPU seconds over the quota's cores (one at most: a thread uses one).

Why: a quota is the device's speed. An agent under one computes on its share whatever the
host's other processes do (pac.cluster.cpu_quota, agent.device.cpu_pool), as long as the
host has the cores for every quota, which is what makes it a device of its own. While the
agents measure themselves, though, the host does more than it will in training: the
coordinator loads the job's model and data beside them (coordinator/drivers/mesh.py), and
on a host whose quotas take every core, that load takes the agents' time. Timed by the wall
clock, four agents capped at half a core on two cores measured a BERT-large block at 107 and
131 ms per sample in two runs, and a fixed cost per micro-batch of 419 and 955 ms; the plan
of the second predicted epoch 1 at 156 s, and it took 104 s (timed by this clock, two runs
predicted 113.1 and 112.2 s, and it took 113.5 and 114.7 s). A thread's CPU time does not
count the time others take from it; over the quota's cores it is the wall time the work
takes when the agent has its share, which is what it has in training.

With more than one torch thread the work is split over threads whose CPU seconds do not
add up to wall time (they wait on one another), so the wall clock it is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from pac.cluster.cpu_quota import OwnQuota

Clock = Callable[[], float]


def profile_clock(quota: OwnQuota | None, threads: int) -> Clock:
    """The clock to time a profile by (see the module docstring): ``time.perf_counter``,
    or this thread's CPU seconds over ``min(1, quota.cores)`` for an agent on one thread
    under a finite quota."""
    if quota is None or threads != 1 or not math.isfinite(quota.cores) or quota.cores <= 0:
        return time.perf_counter
    share = min(1.0, quota.cores)

    def quota_seconds() -> float:
        return time.thread_time() / share

    return quota_seconds


def clock_name(quota: OwnQuota | None, threads: int) -> str:
    """What :func:`profile_clock` times by, for a profile's conditions (a memoized profile
    timed by another clock, or under another quota, is measured again)."""
    if profile_clock(quota, threads) is time.perf_counter:
        return "wall"
    assert quota is not None
    return f"cpu/{min(1.0, quota.cores):g}"
