"""Write the provisioned Grafana dashboards (docker/grafana/dashboards/*.json).

    python docker/grafana/build_dashboards.py          # rewrite the JSON files
    python docker/grafana/build_dashboards.py --check  # exit 1 if a file is out of date

The dashboards are declared here, as data, so that a panel is three lines and every panel
looks alike; the JSON files are what Grafana reads (docker/grafana/provisioning). Every
metric a panel queries must be exported by a service: tests/ops/test_dashboards.py checks
it against the services' registries.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "pac-prometheus"}
AGENT = 'job="pac-agent"'


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | table
    width: int = 12
    height: int = 8
    description: str = ""


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]
    job_variable: bool = False
    tags: list[str] = field(default_factory=lambda: ["pac-mesh"])


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"refId": chr(ord("A") + index), "datasource": DATASOURCE, "expr": expr,
         "legendFormat": legend, "instant": panel.kind != "timeseries",
         "range": panel.kind == "timeseries"}
        for index, (expr, legend) in enumerate(panel.exprs)
    ]
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
    }
    if panel.kind == "stat":
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                             "values": False},
                           "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    if panel.kind == "table":
        body["options"] = {"showHeader": True}
        body["transformations"] = [{"id": "labelsToFields", "options": {}}]
    return body


def _job_variable() -> dict[str, Any]:
    query = "label_values(pac_job_step, job)"
    return {
        "name": "job", "label": "Job", "type": "query", "datasource": DATASOURCE,
        "query": {"query": query, "refId": "jobs"}, "definition": query,
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"text": "All", "value": "$__all"}, "sort": 1,
    }


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    """Grafana's JSON model of ``dashboard``: panels flow left to right, then down."""
    panels, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel_json(panel, panel_id, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": dashboard.tags,
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "5s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [_job_variable()] if dashboard.job_variable else []},
        "annotations": {"list": []},
        "links": [{"title": "PAC mesh", "type": "dashboards", "tags": ["pac-mesh"],
                   "asDropdown": True}],
        "panels": panels,
    }


def _stat(title: str, expr: str, unit: str = "short", legend: str = "") -> Panel:
    return Panel(title, [(expr, legend)], unit=unit, kind="stat", width=6, height=4)


CLUSTER = Dashboard(
    "pac-cluster", "PAC mesh: cluster",
    "Agents of the mesh: who is up, registered and live, and how much memory each holds.",
    [
        _stat("Agents scraped", f"sum(up{{{AGENT}}})"),
        _stat("Agents registered", "sum(pac_agent_registered)"),
        _stat("Agents live (coordinator)", 'sum(pac_coordinator_agents{state="live"})'),
        _stat("Agents lost (coordinator)", 'sum(pac_coordinator_agents{state="lost"})'),
        Panel("Liveness per agent", [
            ("pac_coordinator_agent_up", "{{agent}} (coordinator)"),
            (f"up{{{AGENT}}}", "{{device}} (scrape)"),
        ], description="1 = live. The coordinator marks an agent lost when heartbeats stop."),
        Panel("Seconds since last heartbeat", [
            ("time() - pac_coordinator_agent_last_heartbeat_seconds", "{{agent}}"),
        ], unit="s"),
        Panel("Agent memory (RSS)", [("pac_agent_rss_bytes", "{{device}}")], unit="bytes"),
        Panel("Received bytes waiting for compute", [("pac_agent_mailbox_bytes", "{{device}}")],
              unit="bytes"),
        Panel("Agents by state", [("pac_coordinator_agents", "{{state}}")]),
        Panel("Devices", [("pac_agent_info", "{{name}}")], kind="table",
              description="Each agent's name, accelerator and torch version."),
    ],
)

JOB = Dashboard(
    "pac-job", "PAC mesh: job",
    "One training job: loss, throughput, epoch, phase and the time left.",
    [
        _stat("Epoch", 'pac_job_epoch{job=~"$job"}', legend="{{job}}"),
        _stat("Step", 'pac_job_step{job=~"$job"}', legend="{{job}}"),
        _stat("Phase", 'pac_job_state{job=~"$job"} == 1', legend="{{state}}"),
        _stat("Time left", 'pac_job_eta_seconds{job=~"$job"}', unit="s", legend="{{job}}"),
        Panel("Training loss", [('pac_job_loss{job=~"$job"}', "{{job}}")]),
        Panel("Throughput", [
            ('pac_job_samples_per_second{job=~"$job"}', "{{job}} (reported)"),
            ('rate(pac_job_samples_total{job=~"$job"}[1m])', "{{job}} (1 min rate)"),
        ], unit="samples/s"),
        Panel("Evaluation metrics", [('pac_job_eval_metric{job=~"$job"}', "{{job}} {{metric}}")]),
        Panel("Step per agent", [('pac_agent_current_step{job=~"$job"}', "{{device}}")]),
        Panel("Jobs by state", [("pac_coordinator_jobs", "{{state}}")]),
        Panel(
            "Restarts (an agent went away; the job went on without it)",
            [('pac_job_restarts_total{job=~"$job"}', "{{job}}")],
        ),
    ],
    job_variable=True,
)

PIPELINE = Dashboard(
    "pac-pipeline", "PAC mesh: pipeline",
    "Epoch 1's pipeline: how busy each stage is and the bytes on every link.",
    [
        Panel("Stage compute (share of wall time)", [
            ("sum by (device, stage) (rate(pac_agent_stage_compute_seconds_sum[1m]))",
             "{{device}} stage {{stage}}"),
        ], unit="percentunit",
            description="1 = the device computed all the time; the rest is waiting (bubble)."),
        Panel("Stage waiting for peers (share of wall time)", [
            ("sum by (device, stage) (rate(pac_agent_stage_wait_seconds_sum[1m]))",
             "{{device}} stage {{stage}}"),
        ], unit="percentunit", description="The pipeline bubble, as each device sees it."),
        Panel("Stage forward, p90", [
            ("histogram_quantile(0.9, sum by (le, stage) "
             "(rate(pac_agent_stage_compute_seconds_bucket[1m])))", "stage {{stage}}"),
        ], unit="s"),
        Panel("Bits sent per link", [
            ("8 * sum by (device, peer) (rate(pac_agent_sent_bytes_total[30s]))",
             "{{device}} → {{peer}}"),
        ], unit="bps"),
        Panel("Bits received per link", [
            ("8 * sum by (device, peer) (rate(pac_agent_received_bytes_total[30s]))",
             "{{peer}} → {{device}}"),
        ], unit="bps"),
        Panel("Tensors per second", [
            ("sum by (device) (rate(pac_agent_sent_tensors_total[30s]))", "{{device}} sent"),
            ("sum by (device) (rate(pac_agent_received_tensors_total[30s]))",
             "{{device}} received"),
        ], unit="ops"),
        Panel("Tensor message time, mean", [
            ("sum by (direction) (rate(pac_agent_stream_seconds_sum[1m])) / "
             "sum by (direction) (rate(pac_agent_stream_seconds_count[1m]))", "{{direction}}"),
        ], unit="s"),
        Panel("Bytes sent per link (total)", [
            ("sum by (device, peer) (pac_agent_sent_bytes_total)", "{{device}} → {{peer}}"),
        ], unit="bytes"),
        Panel("Received bytes waiting for compute", [("pac_agent_mailbox_bytes", "{{device}}")],
              unit="bytes"),
    ],
)

CACHE = Dashboard(
    "pac-cache", "PAC mesh: activation cache",
    "The activation cache: its size on each device and the redistribution after epoch 1.",
    [
        _stat("Cache, all devices", "sum(pac_agent_cache_bytes)", unit="bytes"),
        _stat("Redistribution", 'max(pac_job_redistribution_progress{job=~"$job"})',
              unit="percentunit"),
        _stat("Redistributed", 'sum(pac_job_redistribution_bytes_total{job=~"$job"})',
              unit="bytes"),
        _stat("Largest cache", "max(pac_agent_cache_bytes)", unit="bytes"),
        Panel("Cache bytes per device", [("pac_agent_cache_bytes", "{{device}}")], unit="bytes"),
        Panel("Redistribution progress", [
            ('pac_job_redistribution_progress{job=~"$job"}', "{{job}}"),
        ], unit="percentunit"),
        Panel("Redistribution rate", [
            ('rate(pac_job_redistribution_bytes_total{job=~"$job"}[30s])', "{{job}}"),
        ], unit="Bps"),
        Panel("Agent memory (RSS)", [("pac_agent_rss_bytes", "{{device}}")], unit="bytes",
              description="Drops when the backbone is released after epoch 1."),
        Panel("Backbone released", [
            ('pac_agent_backbone_released{job=~"$job"}', "{{device}} {{job}}"),
        ]),
        Panel("Redistributed bytes per link", [
            ("sum by (device, peer) (pac_agent_redistributed_bytes_total)",
             "{{device}} → {{peer}}"),
        ], unit="bytes"),
    ],
    job_variable=True,
)

DASHBOARDS = (CLUSTER, JOB, PIPELINE, CACHE)


def rendered() -> dict[Path, str]:
    """File path -> the JSON text it should hold."""
    return {DASHBOARDS_DIR / f"{d.uid}.json": json.dumps(dashboard_json(d), indent=2,
                                                          ensure_ascii=False) + "\n"
            for d in DASHBOARDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a dashboard file differs from what this writes")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python docker/grafana/build_dashboards.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
