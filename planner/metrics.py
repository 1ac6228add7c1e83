"""The planner's Prometheus metrics (its own registry, served on ``--metrics-port``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class PlannerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.plans = Counter(
            "pac_planner_plans",
            "Plan calls by outcome (ok, infeasible, invalid)",
            ["outcome"],
            registry=self.registry,
        )
        self.plan_seconds = Histogram(
            "pac_planner_plan_seconds",
            "Seconds one plan took to search",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
            registry=self.registry,
        )
