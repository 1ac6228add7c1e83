"""The coordinator over mTLS: `pac status` with a client certificate gets in, plaintext not."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.coordinator_grpc import serve_coordinator
from coordinator.core import Coordinator
from pac.cli import main
from pac.wire.channel import TransportSecurity


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    """A CA and one certificate it signed for 127.0.0.1 (server and client use)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=pac-test-ca", cwd=tmp_path)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
            "-subj", "/CN=localhost", cwd=tmp_path)
    (tmp_path / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf",
            cwd=tmp_path)
    return {"cert": tmp_path / "node.pem", "key": tmp_path / "node.key",
            "ca": tmp_path / "ca.pem"}


def test_status_over_mutual_tls(make_coordinator: Callable[..., Coordinator],
                                certificates: dict[str, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    coordinator = make_coordinator()
    coordinator.registry.register("jetson-1", "10.0.0.5:50061")
    token = tmp_path / "token"
    token.write_text("tls-token\n")
    security = TransportSecurity(cert=certificates["cert"], key=certificates["key"],
                                 ca=certificates["ca"])

    async def scenario() -> tuple[int, int]:
        server, port = await serve_coordinator(coordinator, "127.0.0.1:0", "tls-token",
                                               security)
        common = ["--coordinator", f"127.0.0.1:{port}", "--join-token-file", str(token)]
        try:
            with_cert = await asyncio.to_thread(main, [
                "status", *common, "--tls-cert", str(certificates["cert"]),
                "--tls-key", str(certificates["key"]), "--tls-ca", str(certificates["ca"])])
            plaintext = await asyncio.to_thread(main, ["status", *common, "--insecure"])
        finally:
            await server.stop(None)
        return with_cert, plaintext

    with_cert, plaintext = asyncio.run(scenario())
    captured = capsys.readouterr()
    assert with_cert == 0 and "jetson-1" in captured.out
    assert plaintext == 1 and "pac status:" in captured.err
