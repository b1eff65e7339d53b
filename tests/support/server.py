"""Serve an ASGI app on a real loopback port for the duration of a test (no mocks: real HTTP)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server(uvicorn.Server):
    """uvicorn server that signals a threading.Event once it listens (startup done)."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self.ready = ready

    def install_signal_handlers(self) -> None:  # runs in a thread: leave signals to pytest
        pass

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextmanager
def serve_asgi(app: Any, port: int | None = None) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread; yield its base URL; stop it afterwards."""
    port = port or free_port()
    # A long keep-alive: uvicorn's default (5 s) closes an idle connection while a test runs a CLI
    # subprocess or a drain, and the client's next request on it then races the close (ReadError).
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_keep_alive=300
    )
    ready = threading.Event()
    server = _Server(config, ready)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # surface startup failures to the test
            errors.append(exc)
        finally:
            ready.set()  # never leave the caller waiting when the server could not start

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    ready.wait(timeout=60)
    if errors or not server.started:
        server.should_exit = True
        thread.join(timeout=10)
        raise RuntimeError(f"test server failed to start: {errors!r}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
