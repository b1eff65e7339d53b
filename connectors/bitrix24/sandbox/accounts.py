"""Multi-account mode: one sandbox process serving many Bitrix24 portals, one per listening port.

Each portal is a whole single-account sandbox (its own deals, leaky bucket, faults, stats and
outgoing webhook) at its own origin http://127.0.0.1:<port>, with the same paths as the one-portal
sandbox, so FunnelSync sees distinct accounts exactly as it sees real ones (it keys an account's rate
limiter by the portal's origin). The process only routes each request by the port it arrived on.

For benchmarks every portal also logs when it created each task: GET /_sandbox/tasks/created on a
portal's port answers [[unix time, task id, [bindings]], ...] (bench/tenants.py turns it into
webhook -> task latency).

    python -m connectors.bitrix24.sandbox.accounts --count 100 --ports-file ports.json \\
        --webhook-url 'http://127.0.0.1:8000/webhooks/bitrix24/t{index}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from connectors.bitrix24.sandbox.app import create_sandbox_app
from connectors.bitrix24.sandbox.config import SandboxConfig

TASK_LOG_PATH = "/_sandbox/tasks/created"


@dataclass
class _Portal:
    app: FastAPI
    tasks_seen: int = 0
    created: list[tuple[float, int, list[str]]] = field(default_factory=list)

    def note_new_tasks(self) -> None:
        """Log the tasks the last request created (tasks are kept in creation order)."""
        tasks = self.app.state.portal.state.tasks
        if len(tasks) == self.tasks_seen:
            return
        now = time.time()
        for task in list(tasks.values())[self.tasks_seen :]:
            self.created.append((now, int(task["ID"]), list(task["ufCrmTask"])))
        self.tasks_seen = len(tasks)


class PortalsByPort:
    """ASGI app: the request goes to the portal listening on the port it arrived on."""

    def __init__(self, apps: dict[int, FastAPI]) -> None:
        self.portals = {port: _Portal(app) for port, app in apps.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        server = scope.get("server") or ("", 0)
        portal = self.portals.get(int(server[1]))
        if portal is None:
            await JSONResponse({"error": "no portal on this port"}, status_code=404)(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == TASK_LOG_PATH:
            await JSONResponse(portal.created)(scope, receive, send)
            return
        await portal.app(scope, receive, send)
        portal.note_new_tasks()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Start every portal's own lifespan (its event delivery client), stop them at the end."""
        await receive()  # lifespan.startup
        async with AsyncExitStack() as stack:
            for portal in self.portals.values():
                await stack.enter_async_context(portal.app.router.lifespan_context(portal.app))
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


def portal_config(index: int, port: int, host: str, webhook_url: str | None, **options: Any) -> SandboxConfig:
    """Portal `index`: its own origin, application token and member id (as real portals differ)."""
    return SandboxConfig(
        public_url=f"http://{host}:{port}",
        domain=f"{host}:{port}",
        app_token=f"tenant{index:06d}applicationtoken",
        member_id=f"{index:032x}",
        webhook_url=webhook_url.format(index=index) if webhook_url else None,
        **options,
    )


def serve_portals(count: int, ports_file: Path, *, host: str = "127.0.0.1", **options: Any) -> None:
    """Bind `count` free ports, write them to `ports_file` (JSON list, portal i on ports[i]), serve
    until stopped. `options`: SandboxConfig fields for every portal, and `webhook_url` with {index}."""
    import uvicorn

    webhook_url = options.pop("webhook_url", None)
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sockets.append(sock)
    ports = [int(s.getsockname()[1]) for s in sockets]
    apps = {
        port: create_sandbox_app(portal_config(i, port, host, webhook_url, **options))
        for i, port in enumerate(ports)
    }
    ports_file.write_text(json.dumps(ports), "utf-8")
    config = uvicorn.Config(
        PortalsByPort(apps), log_level="info", access_log=False, lifespan="on", timeout_keep_alive=300
    )
    asyncio.run(uvicorn.Server(config).serve(sockets=sockets))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, required=True, help="how many portals")
    parser.add_argument("--ports-file", type=Path, required=True, help="where the ports are written")
    parser.add_argument("--speed", type=float, default=1.0, help="clock speed (rate limits scale with it)")
    parser.add_argument("--webhook-url", default=None, help="outgoing webhook URL; {index} is the portal's")
    args = parser.parse_args()
    serve_portals(args.count, args.ports_file, speed=args.speed, webhook_url=args.webhook_url)


if __name__ == "__main__":
    main()
