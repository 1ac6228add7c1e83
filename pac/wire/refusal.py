"""Refusing a client-streaming call so that the client sees the refusal's status.

A server may end a client-streaming call before the client has sent everything. grpcio's
asyncio client then races: a write it issues after the call ended fails, and it replaces
the server's status with ``INTERNAL: Internal error from Core`` (grpc/grpc issue 36066).
A sender told "wrong join token" or "unknown job" would read a bare INTERNAL instead.

So a refusal first reads what the client still sends, discarding it, until the client
half-closes; only then does the status go out, and no write of the client's is left to race
it. The reading is bounded in bytes and time: a refused peer cannot make a server read an
unbounded stream, and past the bound the refusal goes out at once (where the race remains).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from pac.wire.limits import MiB

DRAIN_LIMIT_BYTES = 16 * MiB
DRAIN_LIMIT_S = 2.0


async def drain(
    requests: AsyncIterator[object],
    limit_bytes: int = DRAIN_LIMIT_BYTES,
    limit_s: float = DRAIN_LIMIT_S,
) -> int:
    """Read and discard ``requests`` until they end, ``limit_bytes`` were read, or
    ``limit_s`` passed; returns the bytes read. A failing stream just ends the reading."""
    read = 0

    async def consume() -> None:
        nonlocal read
        async for request in requests:
            read += len(request) if isinstance(request, bytes | bytearray | memoryview) else 1
            if read >= limit_bytes:
                return

    # Past the time limit, or a broken stream: the refusal goes out now.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(consume(), limit_s)
    return read


async def refuse_stream(
    requests: AsyncIterator[object],
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    details: str,
) -> NoReturn:
    """Abort a client-streaming call with ``code`` after draining what the client sends."""
    await drain(requests)
    await context.abort(code, details)
    raise AssertionError("unreachable: abort raises")
