"""Fixtures: an amoCRM sandbox account on a real loopback port, connectors pointed at it, and a small
receiver app that records the webhooks the sandbox posts."""

from __future__ import annotations

import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from connectors.amocrm import AmoCRMConnector, OAuthApp
from connectors.amocrm.sandbox import SandboxConfig, create_sandbox_app
from connectors.base import TokenSet
from connectors.http import AMOCRM_DEFAULT, RetryPolicy
from tests.support import web
from tests.support.server import serve_asgi

_accounts = itertools.count(1)
FAST_RETRY = RetryPolicy(attempts=5, max_elapsed=30, base_delay=0.02, max_delay=0.2)
NO_RETRY = RetryPolicy(attempts=1, max_elapsed=5, base_delay=0.01, max_delay=0.01)
SPEED = 10.0


@dataclass
class Sandbox:
    url: str
    config: SandboxConfig

    def control(self, method: str, path: str, json: Any = None) -> Any:
        response = web.request(method, f"{self.url}{path}", json=json, timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A raw API call with the long-lived token (to look at the sandbox as a client would)."""
        headers = {"Authorization": f"Bearer {self.config.token}"}
        return web.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "/_sandbox/stats")
        return result

    def reset_stats(self) -> None:
        self.control("POST", "/_sandbox/stats/reset")

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", "/_sandbox/requests")
        return result

    def fault(self, kind: str, count: int = 1, method: str | None = None, **extra: Any) -> None:
        self.control("POST", "/_sandbox/faults", {"kind": kind, "count": count, "method": method, **extra})

    def create_lead(self, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.control("POST", "/_sandbox/deals", fields)
        return result

    def create_leads(self, count: int, **fields: Any) -> list[int]:
        result: list[int] = self.control(
            "POST", "/_sandbox/deals/bulk", {"count": count, "notify": False, **fields}
        )["ids"]
        return result

    def create_contact(self, lead_id: int | None = None, *, is_main: bool = False, **fields: Any) -> int:
        """A contact as a manager adds it in the UI, linked to `lead_id` when given."""
        body = {**fields, "lead_id": lead_id, "is_main": is_main}
        return int(self.control("POST", "/_sandbox/contacts", body)["id"])

    def main_pipeline(self) -> dict[str, Any]:
        body = self.api("GET", "/api/v4/leads/pipelines").json()
        result: dict[str, Any] = next(p for p in body["_embedded"]["pipelines"] if p["is_main"])
        return result

    def lead(self, lead_id: int | str) -> dict[str, Any]:
        result: dict[str, Any] = self.api("GET", f"/api/v4/leads/{lead_id}").json()
        return result


@contextmanager
def running_sandbox(**options: Any) -> Iterator[Sandbox]:
    n = next(_accounts)
    options.setdefault("speed", SPEED)
    config = SandboxConfig(subdomain=f"test{n}", account_id=31_000_000 + n, **options)
    with serve_asgi(create_sandbox_app(config)) as url:
        yield Sandbox(url, config)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as box:
        yield box


ConnectorFactory = Callable[..., AmoCRMConnector]


@pytest.fixture
async def make_connector() -> AsyncIterator[ConnectorFactory]:
    made: list[AmoCRMConnector] = []

    def make(box: Sandbox, **kwargs: Any) -> AmoCRMConnector:
        kwargs.setdefault("rate", AMOCRM_DEFAULT.scaled(box.config.speed))
        kwargs.setdefault("retry", FAST_RETRY)
        if "oauth" not in kwargs:
            kwargs.setdefault("token", box.config.token)
        connector = AmoCRMConnector(box.config.subdomain, base_url=box.url, **kwargs)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        await connector.aclose()


@pytest.fixture
async def connector(sandbox: Sandbox, make_connector: ConnectorFactory) -> AmoCRMConnector:
    return make_connector(sandbox)


def oauth_app(box: Sandbox) -> OAuthApp:
    return OAuthApp(box.config.client_id, box.config.client_secret, box.config.redirect_uri)


@dataclass
class SavedTokens:
    """A TokenSaver that records what it saved and, at that moment, how many requests the sandbox
    had already seen carrying the new access token (must be none: saved before use)."""

    box: Sandbox
    saved: list[TokenSet] = field(default_factory=list)
    seen_before_save: list[int] = field(default_factory=list)
    log_length_at_save: list[int] = field(default_factory=list)

    async def __call__(self, tokens: TokenSet) -> None:
        async with web.async_client() as client:
            log = (await client.get(f"{self.box.url}/_sandbox/requests")).json()
        fingerprint = fingerprint_of(tokens.access_token)
        self.seen_before_save.append(sum(1 for e in log if e["token"] == fingerprint))
        self.log_length_at_save.append(max((e["seq"] for e in log), default=0))
        self.saved.append(tokens)


def fingerprint_of(token: str) -> str:
    from connectors.amocrm.sandbox.guard import token_fingerprint

    result = token_fingerprint(token)
    assert result is not None
    return result


@dataclass
class Receiver:
    """A webhook destination: records each POST (raw body, content type); answers `status`."""

    url: str
    status: int = 200
    posts: list[tuple[bytes, str]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 20) -> list[tuple[bytes, str]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.posts) >= count, timeout=timeout)
            return list(self.posts)


@contextmanager
def running_receiver(status: int = 200) -> Iterator[Receiver]:
    app = FastAPI()
    holder: dict[str, Receiver] = {}

    @app.post("/amo/hook")
    async def hook(request: Request) -> Response:
        receiver = holder["r"]
        body = await request.body()
        with receiver.arrived:
            receiver.posts.append((body, request.headers.get("content-type", "")))
            receiver.arrived.notify_all()
        return Response(status_code=receiver.status)

    with serve_asgi(app) as url:
        holder["r"] = Receiver(f"{url}/amo/hook", status)
        yield holder["r"]
