"""Container healthcheck: exit 0 when the gRPC service at HOST:PORT reports SERVING.

    python /opt/pac/healthcheck.py 127.0.0.1:50061 [SERVICE]

Calls ``grpc.health.v1.Health/Check`` (the empty service name means the whole server).
Exit 1 for NOT_SERVING or an unreachable server, 2 for a bad command line.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: healthcheck.py HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    service = argv[2] if len(argv) == 3 else ""
    with grpc.insecure_channel(argv[1]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3.0)
        except grpc.RpcError as error:
            print(f"{argv[1]}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{argv[1]} {service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
