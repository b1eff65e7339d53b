"""An ASGI wrapper that counts finished requests under a path prefix, so a test can wait for the
webhooks a sandbox posts in the background on a condition variable instead of sleeping."""

from __future__ import annotations

import threading
from typing import Any


class RequestCounter:
    def __init__(self, app: Any, prefix: str = "/webhooks/") -> None:
        self.app = app
        self.prefix = prefix
        self.count = 0
        self.statuses: list[int] = []
        self._done = threading.Condition()

    def __getattr__(self, name: str) -> Any:  # expose app.state and friends
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            with self._done:
                self.count += 1
                self.statuses.extend(status)
                self._done.notify_all()

    def wait_for(self, count: int, timeout: float = 30) -> int:
        with self._done:
            self._done.wait_for(lambda: self.count >= count, timeout=timeout)
            return self.count
