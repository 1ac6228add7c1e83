"""Every Prometheus metric of the agent, in one place.

All names start with ``pac_agent_``. Each agent has its own ``CollectorRegistry`` (several
agents can live in one test process); ``/metrics`` serves it.

| metric | type | labels | what |
| --- | --- | --- | --- |
| pac_agent_sent_bytes_total | counter | peer | tensor message bytes sent |
| pac_agent_received_bytes_total | counter | peer | tensor message bytes received |
| pac_agent_sent_tensors_total | counter | peer | tensors sent |
| pac_agent_received_tensors_total | counter | peer | tensors received |
| pac_agent_stream_seconds | histogram | direction | one tensor message, first to last byte |
| pac_agent_stage_compute_seconds | histogram | job, stage | one FORWARD of a stage |
| pac_agent_stage_wait_seconds | histogram | job, stage | a step's time blocked on peers (bubble) |
| pac_agent_cache_step_seconds | histogram | job, part | a cache-phase step's time by part |
| pac_agent_backbone_released | gauge | job | 1 once the backbone is released |
| pac_agent_redistributed_bytes_total | counter | peer | cache bytes sent to their owners |
| pac_agent_cache_bytes | gauge | | bytes in the activation cache |
| pac_agent_mailbox_bytes | gauge | | received bytes waiting for compute |
| pac_agent_rss_bytes | gauge | | resident memory of the process |
| pac_agent_idle_rss_bytes | gauge | | resident memory when it registered with no job open |
| pac_agent_peak_rss_bytes | gauge | since | peak RSS since start, since the cache phase |
| pac_agent_current_step | gauge | job | last step run of each open job |
| pac_agent_registered | gauge | | 1 while registered with the coordinator |
| pac_agent_info | info | | name, accelerator, torch version |
"""

from __future__ import annotations

import functools
import resource
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from agent.peak_memory import CACHE_PHASE, START, PeakMemory

# From 1 ms to about 2 min: a tiny activation on loopback up to 1 GiB over a slow link.
_SECONDS_BUCKETS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 120.0)


def rss_bytes() -> int:
    """Current resident set size (Linux: /proc; elsewhere: the peak, ru_maxrss)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class AgentMetrics:
    """The agent's metrics; also the wire's ``TransferObserver``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sent_bytes = Counter(
            "pac_agent_sent_bytes", "Tensor message bytes sent", ["peer"], registry=r
        )
        self.received_bytes = Counter(
            "pac_agent_received_bytes", "Tensor message bytes received", ["peer"], registry=r
        )
        self.sent_tensors = Counter("pac_agent_sent_tensors", "Tensors sent", ["peer"], registry=r)
        self.received_tensors = Counter(
            "pac_agent_received_tensors", "Tensors received", ["peer"], registry=r
        )
        self.stream_seconds = Histogram(
            "pac_agent_stream_seconds",
            "Seconds per tensor message",
            ["direction"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.stage_compute_seconds = Histogram(
            "pac_agent_stage_compute_seconds",
            "Seconds per stage forward",
            ["job", "stage"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.stage_wait_seconds = Histogram(
            "pac_agent_stage_wait_seconds",
            "Seconds per step a stage waited for its neighbours' tensors (pipeline bubble)",
            ["job", "stage"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.cache_step_seconds = Histogram(
            "pac_agent_cache_step_seconds",
            "Seconds per cache-phase step by part: ladder (cache reads), compute, send and "
            "wait (gradient all-reduce), optimizer, checkpoint",
            ["job", "part"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.backbone_released = Gauge(
            "pac_agent_backbone_released",
            "1 once the job's backbone is released (the cache phase)",
            ["job"],
            registry=r,
        )
        self.redistributed_bytes = Counter(
            "pac_agent_redistributed_bytes",
            "Cache-entry bytes sent to their samples' owners after epoch 1",
            ["peer"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "pac_agent_cache_bytes", "Bytes in the activation cache", registry=r
        )
        self.mailbox_bytes = Gauge(
            "pac_agent_mailbox_bytes", "Received bytes waiting for compute", registry=r
        )
        self.rss = Gauge("pac_agent_rss_bytes", "Resident memory of the agent", registry=r)
        self.rss.set_function(rss_bytes)
        self.memory = PeakMemory()
        self.idle_rss = Gauge(
            "pac_agent_idle_rss_bytes",
            "Resident memory when the agent registered with no job open (its floor)",
            registry=r,
        )
        self.idle_rss.set_function(lambda: self.memory.idle_bytes)
        self.peak_rss = Gauge(
            "pac_agent_peak_rss_bytes",
            "Peak resident memory since the process started, and since the cache phase began",
            ["since"],
            registry=r,
        )
        for since in (START, CACHE_PHASE):
            self.peak_rss.labels(since).set_function(functools.partial(self.memory.peak, since))
        self.current_step = Gauge("pac_agent_current_step", "Last step run", ["job"], registry=r)
        self.registered = Gauge(
            "pac_agent_registered", "1 while registered with the coordinator", registry=r
        )
        self.info = Info("pac_agent", "The agent and its device", registry=r)

    # TransferObserver
    def received(self, peer: str, nbytes: int, tensors: int, seconds: float) -> None:
        self.received_bytes.labels(peer).inc(nbytes)
        self.received_tensors.labels(peer).inc(tensors)
        self.stream_seconds.labels("received").observe(seconds)

    def sent(self, peer: str, nbytes: int, tensors: int, seconds: float) -> None:
        self.sent_bytes.labels(peer).inc(nbytes)
        self.sent_tensors.labels(peer).inc(tensors)
        self.stream_seconds.labels("sent").observe(seconds)
