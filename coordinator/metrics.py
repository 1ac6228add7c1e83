"""Every Prometheus metric of the coordinator, in one place (names: /tmp contract).

| metric | type | labels | what |
| --- | --- | --- | --- |
| pac_coordinator_agents | gauge | state | agents by state (live, lost, draining) |
| pac_coordinator_agent_up | gauge | agent | 1 live, 0 lost |
| pac_coordinator_agent_last_heartbeat_seconds | gauge | agent | unix time of last heartbeat |
| pac_coordinator_jobs | gauge | state | jobs by state |
| pac_job_state | gauge | job, state | 1 for the job's current state |
| pac_job_epoch, pac_job_step, pac_job_loss | gauge | job | where the job is |
| pac_job_eval_metric | gauge | job, metric | last evaluation metrics |
| pac_job_samples_per_second, pac_job_eta_seconds | gauge | job | speed |
| pac_job_samples_total | counter | job | training samples processed |
| pac_job_redistribution_progress | gauge | job | 0..1 |
| pac_job_redistribution_bytes_total | counter | job | cache bytes moved |
| pac_job_restarts_total | counter | job | restarts after an agent went away |

The agent metrics are computed from the registry at scrape time, so liveness is current
without a timer; the job metrics are set as progress arrives.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from coordinator.jobs import Job, JobState, Progress
from coordinator.registry import AgentLiveness, AgentRegistry


class _AgentCollector(Collector):
    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        listed = self.registry.agents(include_lost=True)
        by_state = GaugeMetricFamily("pac_coordinator_agents", "Agents by state", labels=["state"])
        counts = Tally(liveness.value for _, liveness in listed)
        for liveness in AgentLiveness:
            by_state.add_metric([_state_name(liveness)], counts.get(liveness.value, 0))
        up = GaugeMetricFamily(
            "pac_coordinator_agent_up", "1 if the agent is live", labels=["agent"]
        )
        last = GaugeMetricFamily(
            "pac_coordinator_agent_last_heartbeat_seconds",
            "Unix time of the agent's last heartbeat",
            labels=["agent"],
        )
        for record, liveness in listed:
            up.add_metric([record.name], 0 if liveness == AgentLiveness.LOST else 1)
            last.add_metric([record.name], record.last_heartbeat)
        yield from (by_state, up, last)


def _state_name(liveness: AgentLiveness) -> str:
    return "live" if liveness == AgentLiveness.ALIVE else liveness.value


class CoordinatorMetrics:
    """The coordinator's metrics in their own ``CollectorRegistry`` (``self.registry``)."""

    def __init__(self, agents: AgentRegistry | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if agents is not None:
            r.register(_AgentCollector(agents))
        self.jobs = Gauge("pac_coordinator_jobs", "Jobs by state", ["state"], registry=r)
        self.job_state = Gauge(
            "pac_job_state", "1 for the job's current state", ["job", "state"], registry=r
        )
        self.epoch = Gauge("pac_job_epoch", "Epoch being trained", ["job"], registry=r)
        self.step = Gauge("pac_job_step", "Global optimizer step", ["job"], registry=r)
        self.loss = Gauge("pac_job_loss", "Last training loss", ["job"], registry=r)
        self.eval_metric = Gauge(
            "pac_job_eval_metric", "Last evaluation metrics", ["job", "metric"], registry=r
        )
        self.samples_per_second = Gauge(
            "pac_job_samples_per_second", "Training speed", ["job"], registry=r
        )
        self.eta = Gauge("pac_job_eta_seconds", "Estimated seconds left", ["job"], registry=r)
        self.samples = Counter("pac_job_samples", "Training samples processed", ["job"], registry=r)
        self.redistribution_progress = Gauge(
            "pac_job_redistribution_progress", "Redistribution done, 0..1", ["job"], registry=r
        )
        self.redistribution_bytes = Counter(
            "pac_job_redistribution_bytes", "Cache bytes redistributed", ["job"], registry=r
        )
        self.restarts = Counter(
            "pac_job_restarts",
            "Times a job started over on the agents still answering when one went away",
            ["job"],
            registry=r,
        )
        self._states: dict[str, JobState] = {}

    def observe(self, job: Job, progress: Progress | None = None) -> None:
        """Set the job's gauges from its record (and the counters from ``progress``)."""
        self._states[job.job_id] = job.state
        for state in JobState:
            self.job_state.labels(job.job_id, state.value).set(int(state == job.state))
        tally = Tally(self._states.values())
        for state in JobState:
            self.jobs.labels(state.value).set(tally.get(state, 0))
        self.epoch.labels(job.job_id).set(job.epoch)
        self.step.labels(job.job_id).set(job.step)
        self.loss.labels(job.job_id).set(job.loss)
        self.samples_per_second.labels(job.job_id).set(job.samples_per_second)
        self.eta.labels(job.job_id).set(job.eta_seconds)
        for name, value in job.metrics.items():
            self.eval_metric.labels(job.job_id, name).set(value)
        if progress is None:
            return
        if progress.samples:
            self.samples.labels(job.job_id).inc(progress.samples)
        if progress.redistribution_progress is not None:
            self.redistribution_progress.labels(job.job_id).set(progress.redistribution_progress)
        if progress.restarted:
            self.restarts.labels(job.job_id).inc()
        if progress.redistribution_bytes:
            self.redistribution_bytes.labels(job.job_id).inc(progress.redistribution_bytes)
