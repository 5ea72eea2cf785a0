"""Run an ASGI app under uvicorn on a loopback port, inside the current event loop.

Used by the demo, the end-to-end tests and the benchmarks: real HTTP over 127.0.0.1, with
the port bound before the app starts so its public URL is known up front.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn


def bind_loopback() -> socket.socket:
    """A listening socket on 127.0.0.1 with a free port chosen by the kernel."""
    # IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose protocol
    # says TCP, and without it a response written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


@asynccontextmanager
async def serve(
    app: Callable[..., Any], sock: socket.socket | None = None, *, log_level: str = "warning"
) -> AsyncIterator[str]:
    """Serve `app` until the block ends; yields its base URL. Lifespan runs as in production."""
    sock = sock or bind_loopback()
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [sock])
        with anyio.fail_after(20):
            while not server.started:
                if server.should_exit:
                    raise RuntimeError("server failed to start")
                await anyio.sleep(0.01)
        try:
            yield url_of(sock)
        finally:
            server.should_exit = True
    sock.close()
