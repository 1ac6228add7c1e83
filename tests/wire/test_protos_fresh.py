"""The committed generated Python of every protos/v1/*.proto is what the script makes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def test_generated_protos_are_fresh(tmp_path: Path) -> None:
    protos = sorted((ROOT / "protos" / "v1").glob("*.proto"))
    assert {p.stem for p in protos} >= {"tensors", "agent", "coordinator"}
    env_path = str(Path(sys.executable).parent)
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={"PATH": f"{env_path}:/usr/bin:/bin"},
    )
    stale = []
    for proto in protos:
        for suffix in SUFFIXES:
            committed = ROOT / "protos" / "v1" / f"{proto.stem}{suffix}"
            fresh = tmp_path / "protos" / "v1" / f"{proto.stem}{suffix}"
            if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
                stale.append(committed.name)
    assert not stale, f"stale generated protos {stale}: run `bash scripts/gen_protos.sh`"
