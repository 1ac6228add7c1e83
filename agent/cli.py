"""``pac agent``: run the long-lived device agent until SIGTERM (then drain, exit 0).

    pac agent --coordinator HOST:PORT --name jetson-1 --listen 0.0.0.0:50061 \\
        --metrics-port 9101 --cache-dir /var/cache/pac \\
        --join-token-file /etc/pac/join-token --tls-cert C --tls-key K --tls-ca CA
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coordinator",
        default=os.environ.get("PAC_COORDINATOR", ""),
        help="coordinator HOST:PORT to register with (env PAC_COORDINATOR)",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("PAC_AGENT_NAME"),
        help="this device's name in the mesh, e.g. jetson-1 (default: hostname)",
    )
    parser.add_argument("--listen", default="0.0.0.0:50061", help="gRPC HOST:PORT to serve on")
    parser.add_argument(
        "--advertise",
        default="",
        help="HOST:PORT peers use to reach this agent (default: from --listen)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9101,
        help="port of the Prometheus /metrics endpoint (-1 = off)",
    )
    parser.add_argument(
        "--cache-dir", default="pac-cache", help="directory of this device's activation cache"
    )
    parser.add_argument(
        "--join-token-file",
        default=None,
        help="file holding the mesh's join token (else env PAC_JOIN_TOKEN)",
    )
    parser.add_argument("--tls-cert", default=None, help="PEM certificate of this agent")
    parser.add_argument("--tls-key", default=None, help="PEM private key of this agent")
    parser.add_argument(
        "--tls-ca", default=None, help="PEM CA that signs the mesh's certificates (enables mTLS)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve and call in plaintext (trusted networks and tests only)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads")
    parser.add_argument(
        "--cpus",
        default="",
        help="compute on these CPU cores only, e.g. 0-1,4 (Linux; default: the affinity it "
        "was started with); agents on the same cores share them (the planner knows)",
    )
    parser.add_argument(
        "--max-message-mib", type=int, default=2048, help="largest tensor message accepted, MiB"
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="how long SIGTERM waits for work in flight",
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    from agent import allocator
    from pac.engine.kernel_caches import bound_kernel_caches

    allocator.one_arena()  # before any thread starts (see agent/allocator.py)
    bound_kernel_caches()  # before the first model runs (see pac/engine/kernel_caches.py)
    if args.cpus:  # before any thread starts too: threads inherit the affinity
        import sys

        from agent.device import pin_to_cpus

        try:
            pin_to_cpus(args.cpus)
        except (ValueError, OSError) as error:
            print(f"pac agent: --cpus {args.cpus}: {error}", file=sys.stderr)
            return 2

    import asyncio
    import logging
    import signal
    import socket
    import sys
    from pathlib import Path

    import torch

    from agent.server import AgentConfig, AgentServer
    from pac.engine.memory import freeze_startup_objects
    from pac.wire.auth import read_join_token
    from pac.wire.channel import SecurityError, TransportSecurity
    from pac.wire.limits import MiB, WireLimits

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        security = TransportSecurity(
            cert=Path(args.tls_cert) if args.tls_cert else None,
            key=Path(args.tls_key) if args.tls_key else None,
            ca=Path(args.tls_ca) if args.tls_ca else None,
            insecure=args.insecure,
        )
        token = read_join_token(args.join_token_file)
    except (SecurityError, OSError, ValueError) as error:
        print(f"pac agent: {error}", file=sys.stderr)
        return 2
    if not token:
        # Whoever can call an agent can make it load files and compute: always require one.
        print(
            "pac agent: no join token: pass --join-token-file or set PAC_JOIN_TOKEN "
            "(the coordinator's token)",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    config = AgentConfig(
        name=args.name or socket.gethostname(),
        listen=args.listen,
        advertise=args.advertise,
        coordinator=args.coordinator,
        cache_dir=Path(args.cache_dir),
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        join_token=token,
        security=security,
        limits=WireLimits(max_message_bytes=args.max_message_mib * MiB),
        drain_grace_s=args.drain_seconds,
    )

    async def main() -> int:
        agent = await AgentServer.start(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, agent.request_shutdown)
        # The first line on stdout says where it serves (tests and scripts read it).
        print(
            f"pac agent {config.name} listening on {agent.address} metrics {agent.metrics_port}",
            flush=True,
        )
        await agent.stopped.wait()
        logging.getLogger("pac.agent").info("agent %s stopped", config.name)
        return 0

    freeze_startup_objects()  # the imports live as long as the agent (pac/engine/memory.py)
    try:
        return asyncio.run(main())
    except OSError as error:
        print(f"pac agent: {error}", file=sys.stderr)
        return 1
