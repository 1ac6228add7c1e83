"""The connection flags of the client commands (argparse only: `pac --help` stays light)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_COORDINATOR = "127.0.0.1:50051"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coordinator",
        default=os.environ.get("PAC_COORDINATOR"),
        help=f"coordinator HOST:PORT (env PAC_COORDINATOR; default {DEFAULT_COORDINATOR})",
    )
    parser.add_argument(
        "--cluster",
        type=Path,
        default=None,
        help="a `pac cluster up` run directory: its coordinator, token and transport are used",
    )
    parser.add_argument(
        "--join-token-file",
        default=None,
        help="file holding the mesh's join token (else env PAC_JOIN_TOKEN)",
    )
    parser.add_argument("--insecure", action="store_true", help="call in plaintext")
    parser.add_argument("--tls-cert", default=None, help="PEM client certificate (mTLS)")
    parser.add_argument("--tls-key", default=None, help="PEM client key (mTLS)")
    parser.add_argument("--tls-ca", default=None, help="PEM CA that signed the coordinator")
