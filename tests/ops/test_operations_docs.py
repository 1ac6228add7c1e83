"""docs/operations.md: its certificate commands make a CA and device certificates that a
real gRPC mTLS handshake accepts (and a certificate of another CA is refused)."""

from __future__ import annotations

import re
import subprocess
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "operations.md"


def certificate_block() -> str:
    text = DOCS.read_text()
    match = re.search(r"<!-- certificates:begin.*?-->\s*```bash\n(.*?)```\s*<!-- certificates:end",
                      text, re.DOTALL)
    assert match, "docs/operations.md lost its certificates block"
    return match.group(1)


def issue_certificates(directory: Path) -> None:
    directory.mkdir()
    subprocess.run(["bash", "-euo", "pipefail", "-c", certificate_block()], cwd=directory,
                   check=True, capture_output=True, timeout=60)


def serving(server_dir: Path, client_dir: Path, server: str, client: str) -> bool:
    """Health-check a server holding ``server``'s certificate (client certificates
    required) from a client holding ``client``'s, dialling the server by its name."""
    def read(directory: Path, name: str) -> bytes:
        return (directory / name).read_bytes()

    grpc_server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), grpc_server)
    credentials = grpc.ssl_server_credentials(
        [(read(server_dir, f"{server}.key"), read(server_dir, f"{server}.pem"))],
        root_certificates=read(server_dir, "ca.pem"), require_client_auth=True)
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    try:
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=read(client_dir, "ca.pem"),
            private_key=read(client_dir, f"{client}.key"),
            certificate_chain=read(client_dir, f"{client}.pem"))
        options = [("grpc.ssl_target_name_override", server)]
        with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials, options) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    finally:
        grpc_server.stop(None)


def test_the_documented_certificates_work_for_mutual_tls(tmp_path: Path) -> None:
    mesh, stranger = tmp_path / "mesh", tmp_path / "stranger"
    issue_certificates(mesh)
    issue_certificates(stranger)  # the same commands: another CA
    verified = subprocess.run(["openssl", "verify", "-CAfile", "ca.pem",
                               "jetson-1.home.arpa.pem"], cwd=mesh, capture_output=True,
                              text=True)
    assert verified.returncode == 0, verified.stderr
    # An agent calling another agent, and the coordinator: both directions authenticated.
    assert serving(mesh, mesh, "jetson-1.home.arpa", "laptop-1.home.arpa")
    assert serving(mesh, mesh, "coordinator.home.arpa", "jetson-1.home.arpa")
    # A device with a certificate of another CA is refused.
    assert not serving(mesh, stranger, "jetson-1.home.arpa", "laptop-1.home.arpa")


@pytest.mark.parametrize("path", ["deploy/pac-agent.service", "docker/prometheus-local.yml",
                                  "docker/plot_job.py", "docker/healthcheck.py",
                                  "docker/grafana/build_dashboards.py", "img/job-metrics.png"])
def test_files_the_docs_name_exist(path: str) -> None:
    assert path in DOCS.read_text()
    assert (ROOT / path).is_file() or (DOCS.parent / path).is_file()
