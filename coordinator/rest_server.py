"""Serving the REST app with uvicorn inside the coordinator's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


class EmbeddedServer(uvicorn.Server):
    """uvicorn that leaves SIGTERM/SIGINT to the coordinator (uvicorn's own handling
    re-raises the signal after shutdown, which would end the process with it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def start(self) -> tuple[asyncio.Task[None], int]:
        """Serve in a task; returns it and the bound port once it accepts connections."""
        task = asyncio.create_task(self.serve())
        while not self.started:
            if task.done():
                raise OSError(
                    f"cannot serve the REST API on {self.config.host}:"
                    f"{self.config.port}: is the port taken?"
                )
            await asyncio.sleep(0.02)
        return task, int(self.servers[0].sockets[0].getsockname()[1])


def rest_server(app: FastAPI, host: str, port: int) -> EmbeddedServer:
    return EmbeddedServer(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    )
