"""Serve an ASGI app on a real loopback port for the duration of a test (no mocks: real HTTP)."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

# Ports below the kernel's ephemeral range: a port picked here and closed again cannot be taken in
# the meantime by an outgoing client connection of another test (those get ephemeral ports), which
# is how a parallel run once saw "address already in use" on a port free_port() had just returned.
_FIRST_PORT, _LAST_PORT = 20000, 32000


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _LAST_PORT


def bound_socket() -> socket.socket:
    """A loopback TCP socket already bound to a free port, for a server started in this process.

    Handing the bound socket to the server leaves no window between picking the port and using it.
    """
    last = min(_LAST_PORT, _ephemeral_floor() - 1)
    for _ in range(200):
        sock = _tcp_socket()
        try:
            sock.bind(("127.0.0.1", random.randint(_FIRST_PORT, last)))
        except OSError:
            sock.close()
            continue
        return sock
    sock = _tcp_socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _tcp_socket() -> socket.socket:
    sock = socket.socket()
    # Accepted connections inherit TCP_NODELAY from the listening socket. uvloop serving a socket it
    # did not create leaves Nagle on, and a response written in two parts then waits for the
    # client's delayed ACK: 40 ms per request instead of 1-3.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def free_port() -> int:
    """A free port for a server another process will bind (a CLI or PostgreSQL subprocess)."""
    with bound_socket() as sock:
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
def serve_asgi(app: Any, sock: socket.socket | None = None) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread; yield its base URL; stop it afterwards.

    `sock` is a socket from bound_socket() when the caller needs the URL before the app exists.
    """
    sock = sock or bound_socket()
    port = int(sock.getsockname()[1])
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
            asyncio.run(server.serve(sockets=[sock]))
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
        sock.close()
        raise RuntimeError(f"test server failed to start: {errors!r}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
