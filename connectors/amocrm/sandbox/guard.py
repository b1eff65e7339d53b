"""What stands in front of every API call, in the real order: the account block (403 HTML), injected
faults, the rate limiter (429 HTML), authentication (401). Also counts and logs requests for tests.

Control endpoints under /_sandbox are not limited, authenticated, counted or logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.amocrm.sandbox.errors import html_error, problem
from connectors.amocrm.sandbox.state import ADMIN_ID, SandboxState
from connectors.sandbox_support.asgi import pass_on

_IDS = re.compile(r"/\d+")
FAULT_KINDS = (
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_402",
    "http_403",
    "html_500",
    "timeout",
    "rate_limit",
    "blocked_403",
    "expired_token",
)


class Bucket:
    """Leaky bucket: holds `capacity` requests, drains `rate` per second."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = 0.0
        self.peak = 0.0  # highest level admitted: how close callers came to the limit
        self.at = time.monotonic()

    def admit(self, tolerance: float) -> bool:
        now = time.monotonic()
        self.level = max(0.0, self.level - (now - self.at) * self.rate)
        self.at = now
        if self.level + 1 > self.capacity + tolerance:
            return False
        self.level += 1
        self.peak = max(self.peak, self.level)
        return True


@dataclass
class Fault:
    kind: str
    count: int
    method: str | None = None  # "PATCH", "/api/v4/leads" or "PATCH /api/v4/leads" (prefix match)
    over_batch: int | None = None  # only when the JSON array body has more items than this
    delay: float = 5.0
    # Let this many matching requests through before the fault starts: an outage that begins in the
    # middle of a client's sequence of calls (e.g. after the pipeline was created).
    after: int = 0

    def matches(self, method: str, path: str, batch: int | None) -> bool:
        if self.method:
            want_method, _, want_path = self.method.partition(" ")
            if want_method.startswith("/"):
                want_method, want_path = "", want_method
            if want_method and want_method.upper() != method:
                return False
            if want_path and not path.startswith(want_path):
                return False
        return self.over_batch is None or (batch is not None and batch > self.over_batch)


@dataclass
class Guard:
    state: SandboxState
    faults: list[Fault] = field(default_factory=list)
    blocked: bool = False
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    batch_sizes: dict[str, list[int]] = field(default_factory=dict)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20_000))
    seq: int = 0
    buckets: dict[str, Bucket] = field(default_factory=dict)
    rate_limited: deque[float] = field(default_factory=deque)
    long_lived_expired: bool = False

    def reset_stats(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.batch_sizes.clear()
        self.log.clear()

    def stats(self) -> dict[str, Any]:
        by_method: Counter[str] = Counter()
        for key, count in self.requests.items():
            by_method[key.split(" ", 1)[0]] += count
        return {
            "requests": dict(self.requests),
            "by_method": dict(by_method),
            "total": sum(self.requests.values()),
            "writes": sum(c for m, c in by_method.items() if m in ("POST", "PATCH", "DELETE", "PUT")),
            "statuses": dict(self.statuses),
            "batch_sizes": self.batch_sizes,
            "blocked": self.blocked,
            "rate_peaks": {key: round(b.peak, 2) for key, b in self.buckets.items()},
        }

    def _bucket(self, key: str, rate: float) -> Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            # Capacity = one second's worth at real speed (7), drained `speed` times faster.
            bucket = self.buckets[key] = Bucket(rate * self.state.config.speed, rate)
        return bucket

    def _admit(self, key: str, rate: float) -> bool:
        cfg = self.state.config
        return self._bucket(key, rate).admit(max(1.0, rate * cfg.speed * cfg.rate_jitter))

    def _take_fault(self, method: str, path: str, batch: int | None) -> Fault | None:
        for fault in self.faults:
            if fault.count > 0 and fault.matches(method, path, batch):
                if fault.after > 0:  # not started yet: this request passes
                    fault.after -= 1
                    continue
                fault.count -= 1
                return fault
        return None

    def _integration(self, request: Request) -> tuple[str | None, dict[str, Any] | None, str]:
        """(integration key, token record, why refused) for the request's Bearer token."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None, None, "no Bearer token"
        cfg = self.state.config
        if cfg.token and secrets.compare_digest(token, cfg.token) and not self.long_lived_expired:
            return "long-lived", {"user_id": ADMIN_ID}, ""
        for record in self.state.tokens():
            if secrets.compare_digest(record["access_token"], token):
                if record["expires_at"] <= self.state.clock():
                    return None, None, "token expired"
                return cfg.client_id, record, ""
        return None, None, "unknown token"

    def block_account(self) -> None:
        self.blocked = True

    def record(self, request: Request, body: bytes) -> dict[str, Any]:
        """Count and log an API call; the log entry gets its status once answered (`finish`)."""
        path = request.url.path
        method = request.method
        parsed = _json(body)
        batch = len(parsed) if isinstance(parsed, list) else None
        route = f"{method} {_IDS.sub('/{id}', path)}"
        self.requests[route] += 1
        if batch is not None:
            self.batch_sizes.setdefault(route, []).append(batch)
        self.seq += 1
        entry: dict[str, Any] = {
            "seq": self.seq,
            "method": method,
            "path": path,
            "query": request.url.query,
            "route": route,
            "batch": batch,
            # Bodies are logged for API calls only: the token endpoint's carry secrets.
            "body": parsed if len(body) <= 65_536 and not path.startswith("/oauth2") else None,
            "token": token_fingerprint(request.headers.get("authorization", "").partition(" ")[2]),
            "at": time.time(),
            # Arrival on a clock that never steps: tests measure the gap between a 429 and the
            # retry that followed it (wall-clock `at` can jump).
            "arrived": time.monotonic(),
        }
        self.log.append(entry)
        return entry

    def finish(self, entry: dict[str, Any], status: int) -> None:
        entry["status"] = status
        self.statuses[str(status)] += 1

    async def screen(self, request: Request, method: str, path: str, batch: int | None) -> Response | None:
        """The answer the account gives before the endpoint (block, fault, 429, 401), or None to
        let the call through, with the caller's user id on `request.state`."""
        if self.blocked:
            return html_error(403, "Forbidden")
        fault = self._take_fault(method, path, batch)
        if fault is not None:
            early = await self._fault_response(fault)
            if early is not None:
                return early
        cfg = self.state.config
        key, record, _why = (None, None, "") if path == "/oauth2/access_token" else self._integration(request)
        bucket_key = key or "anonymous"
        account_ok = self._admit("account", cfg.account_requests_per_second)
        if not account_ok or not self._admit(bucket_key, cfg.requests_per_second):
            self._count_rate_limited()
            return html_error(429, "Too Many Requests")
        if path != "/oauth2/access_token":
            if key is None:
                return problem(401, "Unauthorized", "Unauthorized")
            request.state.user_id = (record or {}).get("user_id", ADMIN_ID)
        return None

    def _count_rate_limited(self) -> None:
        limit = self.state.config.block_after_rate_limited
        if limit is None:
            return
        now = time.monotonic()
        window = 60.0 / self.state.config.speed
        self.rate_limited.append(now)
        while self.rate_limited and self.rate_limited[0] < now - window:
            self.rate_limited.popleft()
        if len(self.rate_limited) > limit:
            self.block_account()

    async def _fault_response(self, fault: Fault) -> Response | None:
        kind = fault.kind
        if kind == "blocked_403":
            self.block_account()
            return html_error(403, "Forbidden")
        if kind == "rate_limit":
            return html_error(429, "Too Many Requests")
        if kind == "html_500":
            return html_error(500, "Internal Server Error")
        if kind == "timeout":
            await asyncio.sleep(fault.delay)
            return html_error(504, "Gateway Time-out")
        if kind == "expired_token":
            self.expire_tokens()
            return None
        if kind == "http_504":
            return html_error(504, "Gateway Time-out")
        if kind == "http_502":
            return html_error(502, "Bad Gateway")
        if kind == "http_402":  # unpaid account (error-code tables of the client libraries)
            return problem(402, "Payment Required", "Подписка закончилась")
        if kind == "http_403":  # a JSON 403 is about rights (not admin, IP not allowed), not a block
            return problem(403, "Forbidden", "Access denied")
        code = int(kind.removeprefix("http_"))
        return problem(
            code, "Service Unavailable" if code == 503 else "Internal Server Error", "Internal error"
        )

    def expire_tokens(self) -> None:
        """Every issued access token (and the long-lived one) is now past its lifetime."""
        for record in self.state.tokens():
            record["expires_at"] = self.state.clock() - 1
        self.long_lived_expired = True


def _json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def token_fingerprint(token: str) -> str | None:
    """Tokens are logged by fingerprint: tests compare them without the log holding secrets."""
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else None


class GuardMiddleware:
    """Puts the account's `Guard` in front of every API call (pure ASGI: see sandbox_support.asgi)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        body = await request.body()
        entry = self.guard.record(request, body)
        early = await self.guard.screen(request, entry["method"], entry["path"], entry["batch"])
        if early is None:
            status = await pass_on(self.app, scope, body, receive, send)
        else:
            await early(scope, receive, send)
            status = early.status_code
        self.guard.finish(entry, status)
