"""Fixtures: a Bitrix24 sandbox on a real loopback port, connectors pointed at it, and a receiver
app that records the events the sandbox posts."""

from __future__ import annotations

import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.base import TokenSet
from connectors.bitrix24.client import Bitrix24Connector
from connectors.bitrix24.sandbox import SandboxConfig, create_sandbox_app
from connectors.bitrix24.transport import OAuthApp
from connectors.http import BITRIX24_STANDARD, RetryPolicy
from tests.support import web
from tests.support.server import serve_asgi

_keys = itertools.count()
FAST_RETRY = RetryPolicy(attempts=4, max_elapsed=20, base_delay=0.01, max_delay=0.05)
NO_RETRY = RetryPolicy(attempts=1, max_elapsed=5, base_delay=0.01, max_delay=0.01)


@dataclass
class Sandbox:
    url: str
    config: SandboxConfig
    app: Any

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/rest/{self.config.webhook_user}/{self.config.webhook_code}/"

    def control(self, method: str, path: str, json: Any = None) -> Any:
        response = web.request(method, f"{self.url}{path}", json=json, timeout=30)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "/_sandbox/stats")
        return result

    def wait_for_stats(self, timeout: float = 60, **at_least: dict[str, int]) -> dict[str, Any]:
        """The stats once the counters reach `at_least` (e.g. by_method={"batch": 1}): the sandbox
        answers when the CRM saw it, so the test waits on that, not on a clock."""
        response = web.post(
            f"{self.url}/_sandbox/stats/wait", json={**at_least, "timeout": timeout}, timeout=timeout + 30
        )
        assert response.status_code == 200, f"timed out waiting for {at_least}: {response.text}"
        result: dict[str, Any] = response.json()
        return result

    def reset_stats(self) -> None:
        self.control("POST", "/_sandbox/stats/reset")

    def fault(self, kind: str, count: int = 1, method: str | None = None, **extra: Any) -> None:
        self.control("POST", "/_sandbox/faults", {"kind": kind, "count": count, "method": method, **extra})

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "/_sandbox/state")
        return result

    def create_deal(self, **fields: Any) -> int:
        return int(self.control("POST", "/_sandbox/deals", {"fields": fields})["ID"])

    def create_contact(self, deal_id: int | None = None, *, primary: bool = False, **fields: Any) -> int:
        """A contact as a manager adds it in the UI, bound to `deal_id` when given."""
        spec = {"fields": fields, "deal_id": deal_id, "primary": primary}
        return int(self.control("POST", "/_sandbox/contacts", spec)["ID"])

    def webhook(self, **options: Any) -> Bitrix24Connector:
        options.setdefault("retry", FAST_RETRY)
        options.setdefault("rate", BITRIX24_STANDARD.scaled(self.config.speed))
        options.setdefault("account_key", f"b24test:{next(_keys)}")
        return Bitrix24Connector(webhook_url=self.webhook_url, **options)

    def oauth_app(self, saver: Callable[[TokenSet], Any], **overrides: Any) -> OAuthApp:
        tokens = TokenSet(
            access_token=self.config.access_token,
            refresh_token=self.config.refresh_token,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        values: dict[str, Any] = {
            "client_endpoint": f"{self.url}/rest/",
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
            "tokens": tokens,
            "token_saver": saver,
            "oauth_server": self.url,
            "member_id": self.config.member_id,
        }
        values.update(overrides)
        return OAuthApp(**values)

    def oauth(self, saver: Callable[[TokenSet], Any], **options: Any) -> Bitrix24Connector:
        options.setdefault("retry", FAST_RETRY)
        options.setdefault("rate", BITRIX24_STANDARD.scaled(self.config.speed))
        options.setdefault("account_key", f"b24test:{next(_keys)}")
        return Bitrix24Connector(oauth=self.oauth_app(saver), **options)


@contextmanager
def running_sandbox(**options: Any) -> Iterator[Sandbox]:
    options.setdefault("speed", 50.0)
    config = SandboxConfig(**options)
    app = create_sandbox_app(config)
    with serve_asgi(app) as url:
        yield Sandbox(url, config, app)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as box:
        yield box


@pytest.fixture
async def connector(sandbox: Sandbox) -> AsyncIterator[Bitrix24Connector]:
    conn = sandbox.webhook()
    try:
        yield conn
    finally:
        await conn.aclose()


@dataclass
class Receiver:
    """A tiny ASGI app standing in for FunnelSync's webhook endpoint: records raw deliveries."""

    url: str = ""
    received: list[tuple[str, str, bytes]] = field(default_factory=list)  # (path, content type, body)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self.arrived:
            self.received.append((scope["path"], headers.get("content-type", ""), body))
            self.arrived.notify_all()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[str, str, bytes]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    with serve_asgi(rec) as url:
        rec.url = url
        yield rec
