"""deploy/pac-agent.service passes `systemd-analyze verify`, and its command line parses."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.cli import add_arguments

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INSTALLED_PAC = "/opt/pac/.venv/bin/pac"


def unit_text() -> str:
    return (DEPLOY / "pac-agent.service").read_text()


def env_file() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "pac-agent.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
    # verify checks that ExecStart's binary exists: point it at a stand-in in a temp copy.
    stand_in = tmp_path / "pac"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "pac-agent.service"
    unit.write_text(unit_text().replace(INSTALLED_PAC, str(stand_in)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "pac-agent.service" not in result.stderr, result.stderr  # no warnings about it


def test_unit_restarts_on_failure_as_a_dedicated_hardened_user() -> None:
    text = unit_text()
    for setting in (
        "Restart=on-failure",
        "EnvironmentFile=/etc/pac/agent.env",
        "Group=pac",
        "User=pac",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/cache/pac",
    ):
        assert re.search(rf"^{re.escape(setting)}$", text, re.MULTILINE), setting


def test_exec_start_with_the_example_environment_is_a_valid_pac_agent_command() -> None:
    text = unit_text()
    exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", text, re.MULTILINE | re.DOTALL)
    assert exec_start
    command = exec_start.group(1).replace("\\\n", " ")
    env = env_file()
    used = set(re.findall(r"\$\{?(\w+)\}?", command))
    assert used <= set(env), f"variables without an example value: {used - set(env)}"
    expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], command)
    argv = shlex.split(expanded)
    assert argv[:2] == [INSTALLED_PAC, "agent"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv[2:])
    assert args.cache_dir == "/var/cache/pac" and args.tls_ca == "/etc/pac/ca.pem"
    assert args.join_token_file == "/etc/pac/join-token" and args.coordinator
