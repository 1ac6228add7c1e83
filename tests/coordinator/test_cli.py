"""`pac coordinator` refuses to start without what it needs, with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from pac.cli import main


def test_the_coordinator_needs_a_join_token_and_a_transport(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PAC_JOIN_TOKEN", raising=False)
    assert main(["coordinator", "--state", str(tmp_path), "--insecure"]) == 2
    assert "no join token" in capsys.readouterr().err
    monkeypatch.setenv("PAC_JOIN_TOKEN", "t")
    assert main(["coordinator", "--state", str(tmp_path)]) == 2
    assert "--insecure" in capsys.readouterr().err
    assert main(["coordinator", "--state", str(tmp_path), "--insecure", "--listen", "x"]) == 2
    assert "is not [HOST]:PORT" in capsys.readouterr().err


def test_client_commands_say_how_to_reach_the_coordinator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PAC_JOIN_TOKEN", raising=False)
    assert main(["status", "--insecure"]) == 2
    assert "no join token" in capsys.readouterr().err
    assert main(["status", "--cluster", str(tmp_path)]) == 2
    assert "is the cluster up" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("t\n")
    # Nothing listens on port 1: UNAVAILABLE, said in words.
    assert main(["jobs", "--insecure", "--join-token-file", str(token),
                 "--coordinator", "127.0.0.1:1"]) == 1
    assert "cannot reach the coordinator at 127.0.0.1:1" in capsys.readouterr().err
