"""Every metric a Grafana dashboard queries is exported by a service; provisioning lines up."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from agent.metrics import AgentMetrics
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import AgentRegistry

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "docker" / "grafana"
# Series Prometheus makes itself for every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan", "atan2"}
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                "_created"),
             "summary": ("", "_sum", "_count", "_created"), "info": ("_info",),
             "gauge": ("",), "unknown": ("",), "stateset": ("",), "enum": ("",)}


def exported_series(registry: CollectorRegistry) -> set[str]:
    """Names of the series a registry exposes on /metrics, labelled or not yet observed
    (``pac_agent_sent_bytes`` counter -> ``pac_agent_sent_bytes_total``)."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def service_series() -> set[str]:
    agent = AgentMetrics().registry
    coordinator = CoordinatorMetrics(AgentRegistry()).registry
    return exported_series(agent) | exported_series(coordinator) | SCRAPE_SERIES


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (in ``{}`` or ``by (...)``), durations or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if not call and name not in _KEYWORDS:
            names.add(name)
    return names


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text())
            for path in sorted((GRAFANA / "dashboards").glob("*.json"))}


def queried_metrics(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Panel title (or variable) -> metric names it queries."""
    found: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.setdefault(panel["title"], set()).update(promql_metric_names(target["expr"]))
    for variable in dashboard["templating"]["list"]:
        match = re.match(r"label_values\((\w+)\s*,", variable["query"]["query"])
        if match:
            found[f"${variable['name']}"] = {match.group(1)}
    return found


def test_the_promql_reader_finds_metric_names_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.9, sum by (le, stage) (rate(pac_a_seconds_bucket'
            '{job=~"$job", stage!="x"}[$__rate_interval]))) / ignoring(le) '
            '(time() - pac_b_seconds offset 5m) > bool 1e3 and on(device) up')
    assert promql_metric_names(expr) == {"pac_a_seconds_bucket", "pac_b_seconds", "up"}


def test_exported_series_carry_the_suffixes_prometheus_shows() -> None:
    names = exported_series(AgentMetrics().registry)
    assert {"pac_agent_sent_bytes_total", "pac_agent_stream_seconds_bucket",
            "pac_agent_info", "pac_agent_cache_bytes"} <= names
    assert "pac_agent_sent_bytes" not in names


def test_every_metric_a_dashboard_queries_is_exported() -> None:
    exported = service_series()
    found = dashboards()
    assert {"pac-cluster.json", "pac-job.json", "pac-pipeline.json", "pac-cache.json"} <= set(
        found)
    missing = []
    for file_name, dashboard in found.items():
        queried = queried_metrics(dashboard)
        assert queried, f"{file_name} queries nothing"
        for where, names in queried.items():
            missing += [f"{file_name} / {where}: {name}" for name in sorted(names - exported)]
    assert not missing, "queried but exported by no service:\n" + "\n".join(missing)


def test_a_dashboard_with_an_unknown_metric_would_be_caught() -> None:
    panel = {"title": "typo", "targets": [{"expr": "rate(pac_agent_sent_byte_total[1m])"}]}
    queried = queried_metrics({"panels": [panel], "templating": {"list": []}})
    assert queried["typo"] - service_series() == {"pac_agent_sent_byte_total"}


def test_dashboard_files_match_their_declarations() -> None:
    check = subprocess.run([sys.executable, str(GRAFANA / "build_dashboards.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_provisioning_points_at_the_dashboards_and_the_data_source() -> None:
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    [datasource] = source["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/pac.yml").read_text())
    [files] = provider["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert f"./docker/grafana/dashboards:{files['options']['path']}:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(files["options"]["path"] + "/")
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()
    uids = set()
    for file_name, dashboard in dashboards().items():
        assert dashboard["uid"] not in uids, f"{file_name}: duplicate uid"
        uids.add(dashboard["uid"])
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], (file_name, panel["title"])
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, (file_name, panel["title"])
