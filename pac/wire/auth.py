"""The mesh's join token: who may call an agent or the coordinator.

Every call carries the token in the ``x-pac-join-token`` metadata; a server interceptor
compares it in constant time and answers UNAUTHENTICATED when it is missing or wrong.
Health checks and reflection stay open so that load balancers and grpcurl can probe.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from pac.wire.refusal import refuse_stream

JOIN_TOKEN_METADATA = "x-pac-join-token"
JOIN_TOKEN_ENV = "PAC_JOIN_TOKEN"
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (empty when there is none)."""
    return ((JOIN_TOKEN_METADATA, token),) if token else ()


def read_join_token(token_file: str | None, env: str = JOIN_TOKEN_ENV) -> str | None:
    """The join token from ``token_file`` (stripped) or else the environment variable."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"join token file {token_file} is empty")
        return token
    return os.environ.get(env) or None


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED (after
    draining a client stream, so that the client reads this status: see refusal.py)."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        await refuse_stream(requests, context, grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class JoinTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose ``x-pac-join-token`` is not ``token``."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("a join token must not be empty")
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN_SERVICES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get(JOIN_TOKEN_METADATA)
        if given is None:
            return _deny(
                handler,
                f"missing join token: send it in the "
                f"'{JOIN_TOKEN_METADATA}' metadata (pac agent --join-token-file)",
            )
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if not hmac.compare_digest(given_bytes, self._token):
            return _deny(handler, "wrong join token: use the token of this mesh's coordinator")
        return handler
