"""Bitrix24 REST transport: auth (inbound webhook or OAuth app), one call, `batch`, error
classification, and the per-method operating-time budget.

Every HTTP request goes through ThrottledClient (the portal's leaky bucket, 2/s burst 50 or 5/s burst
250 on Enterprise) and with_retries. Errors are classified here, once (DOCS error-codes.md,
_includes/system-errors.md, limits.md; docs/crm/bitrix24.md §5 and §6).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from connectors.base import (
    MAX_BATCH,
    AccountBlocked,
    AuthError,
    CRMError,
    PermanentError,
    RateLimited,
    Retryable,
    TokenSaver,
    TokenSet,
    chunked,
)
from connectors.bitrix24.wire import command
from connectors.http import (
    BITRIX24_STANDARD,
    DomainSaver,
    RatePolicy,
    RetryPolicy,
    ThrottledClient,
    origin,
    redact_error,
    tls_context,
    with_origin,
    with_retries,
)

DEFAULT_OAUTH_SERVER = "https://oauth.bitrix.info"
OPERATING_WINDOW = 600.0  # seconds: the sliding window of the operating-time limit (DOCS limits.md)
OPERATING_BUDGET = 480.0  # seconds per method per window (docs' example value; JSSDK default)
SLOWDOWN_SHARE = 0.8  # JSSDK treats 80% of the budget as "heavy": start spreading calls from there
# The cloud portal interrupts a request that runs longer than about 60 s and answers then
# (docs/crm/bitrix24.md §6; UNVERIFIED in today's official docs). The client waits longer, so
# that answer (a result, or the portal's own error) reaches us: giving up first would abandon a
# request the portal is still executing, and a create it then applies is one we count as uncertain.
# The margin covers queueing in front of the portal, upload of a 50-command batch and the answer.
REQUEST_TIME_LIMIT = 60.0
DEFAULT_TIMEOUT = REQUEST_TIME_LIMIT + 15.0
# Inside a batch these refuse one command's item (a deal the user may not change: DOCS
# crm-item-update.md, crm-timeline-comment-add.md), not the credentials: the item's permanent error.
# Refusals of the credentials themselves (insufficient_scope...) stay account-level even there.
_ITEM_REFUSALS = {"ACCESS_DENIED"}
_AUTH_CODES = {
    "INVALID_TOKEN",
    "NO_AUTH_FOUND",
    "INVALID_CREDENTIALS",
    "USER_ACCESS_ERROR",
    "ACCESS_DENIED",
    "WRONG_AUTH_TYPE",
    "APPLICATION_NOT_FOUND",
    "NOT_INSTALLED",
    "PAYMENT_REQUIRED",
    "PORTAL_DELETED",
    "METHOD_CONFIRM_WAITING",
    "INVALID_GRANT",
    "INVALID_CLIENT",
}
_SCOPE_BY_PREFIX = (
    ("crm.", "crm"),
    ("tasks.", "task"),
    ("task.", "task"),
    ("user.", "user"),
    ("event.", "app"),
)


MAX_CONNECTIONS = 50


def scope_of(method: str) -> str:
    return next(
        (scope for prefix, scope in _SCOPE_BY_PREFIX if method.startswith(prefix)), method.split(".")[0]
    )


@dataclass
class OAuthApp:
    """A local or marketplace app installed on one portal. `client_endpoint` is the portal's
    `https://{portal}/rest/`; `oauth_server` is oauth.bitrix.info (overridable for the sandbox)."""

    client_endpoint: str
    client_id: str
    client_secret: str
    tokens: TokenSet
    token_saver: TokenSaver
    oauth_server: str = DEFAULT_OAUTH_SERVER
    member_id: str | None = None


@dataclass
class _PortalAuth:
    """Token state shared by every connector of one portal in this process, so "one refresh at a time
    per portal" holds across connector objects too."""

    tokens: TokenSet
    client_endpoint: str
    # Where the next refresh goes: the token answer's server_endpoint moves it (DOCS settings/oauth).
    oauth_server: str = DEFAULT_OAUTH_SERVER
    locks: dict[int, asyncio.Lock] = field(default_factory=dict)
    refreshes: int = 0

    def lock(self) -> asyncio.Lock:
        loop_id = id(asyncio.get_running_loop())
        lock = self.locks.get(loop_id)
        if lock is None:
            lock = self.locks[loop_id] = asyncio.Lock()
        return lock


_portal_auth: dict[str, _PortalAuth] = {}


@dataclass
class Outcome:
    """One batch command's outcome: its result, or the PermanentError naming the item."""

    ref: str
    result: Any = None
    error: PermanentError | None = None
    total: int | None = None
    next: int | None = None


class Bitrix24Transport:
    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        oauth: OAuthApp | None = None,
        rate: RatePolicy = BITRIX24_STANDARD,
        retry: RetryPolicy | None = None,
        operating_budget: float = OPERATING_BUDGET,
        timeout: float = DEFAULT_TIMEOUT,
        account_key: str | None = None,
        domain_saver: DomainSaver | None = None,
    ) -> None:
        if (webhook_url is None) == (oauth is None):
            raise ValueError("give exactly one of webhook_url (inbound webhook) or oauth (application)")
        self.oauth = oauth
        # Told (old origin, new origin) when the portal moved (a 302 from a renamed portal, or a new
        # client_endpoint in a token answer), so the app records the new address.
        self.domain_saver = domain_saver
        if webhook_url is not None:
            self.webhook_url = webhook_url if webhook_url.endswith("/") else webhook_url + "/"
            portal = urlsplit(self.webhook_url).netloc
        else:
            assert oauth is not None
            self.webhook_url = ""
            portal = urlsplit(oauth.client_endpoint).netloc
        self.portal = portal
        # member_id is the portal's stable id (survives a domain change); the host for webhooks.
        self.account_key = account_key or f"bitrix24:{(oauth.member_id if oauth else None) or portal}"
        self.retry = retry or RetryPolicy()
        self.operating_budget = operating_budget
        self.rate = rate
        self.http = ThrottledClient(
            "",
            self.account_key,
            rate,
            timeout=timeout,
            on_host_change=self._host_changed,
            # Keep connections alive for the whole burst: a fresh TCP connect per request adds arrival
            # jitter the portal's bucket sees (fast_bitrix24 also caps concurrency at 50).
            transport=httpx.AsyncHTTPTransport(
                verify=tls_context(),
                limits=httpx.Limits(
                    max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
                ),
            ),
        )
        self._auth: _PortalAuth | None = None
        if oauth is not None:
            shared = _portal_auth.get(self.account_key)
            if shared is None:
                shared = _portal_auth[self.account_key] = _PortalAuth(
                    oauth.tokens, oauth.client_endpoint, oauth.oauth_server
                )
            elif oauth.tokens.expires_at > shared.tokens.expires_at:
                # The caller holds a newer pair (e.g. the app was re-authorized): it wins.
                shared.tokens = oauth.tokens
                shared.client_endpoint = oauth.client_endpoint
                shared.oauth_server = oauth.oauth_server
            self._auth = shared
        # Per method: `time.operating` (seconds used in the window) and `operating_reset_at` from the
        # latest response; batch commands report theirs in result_time (DOCS limits.md).
        self.operating_seconds: dict[str, float] = {}
        self.operating_reset_at: dict[str, float] = {}
        self.operating_waits = 0

    @property
    def is_oauth(self) -> bool:
        return self.oauth is not None

    @property
    def refreshes(self) -> int:
        return self._auth.refreshes if self._auth else 0

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- a renamed portal ----------------------------------------------------------------------------

    async def _host_changed(self, old: str, new: str) -> None:
        """The portal answered from `new` instead of `old` (origins): call it there from now on."""
        if self.webhook_url:
            self.webhook_url = with_origin(self.webhook_url, old, new)
        if self._auth is not None:
            self._auth.client_endpoint = with_origin(self._auth.client_endpoint, old, new)
        await self._announce_move(old, new)

    async def _announce_move(self, old: str, new: str) -> None:
        self.portal = urlsplit(new).netloc
        if self.domain_saver is not None:
            await self.domain_saver(old, new)

    # --- operating-time budget ---------------------------------------------------------------------

    def _record_time(self, method: str, timing: Any) -> None:
        if not isinstance(timing, Mapping) or "operating" not in timing:
            return
        try:
            self.operating_seconds[method] = float(timing["operating"])
            if timing.get("operating_reset_at") is not None:
                self.operating_reset_at[method] = float(timing["operating_reset_at"])
        except (TypeError, ValueError):
            return

    async def _pace(self, methods: Sequence[str]) -> None:
        """Slow a method down once it used 80% of its budget: spread the rest until the window
        resets, and wait for the reset when the budget is spent (else the portal answers 429)."""
        delay = 0.0
        for method in set(methods):
            used = self.operating_seconds.get(method, 0.0)
            reset_at = self.operating_reset_at.get(method)
            threshold = SLOWDOWN_SHARE * self.operating_budget
            if used < threshold or reset_at is None:
                continue
            remaining = reset_at - time.time()
            if remaining <= 0:
                self.operating_seconds.pop(method, None)
                continue
            share = min(1.0, (used - threshold) / max(self.operating_budget - threshold, 1e-9))
            delay = max(delay, remaining * share)
        if delay > 0:
            self.operating_waits += 1
            await asyncio.sleep(delay)

    # --- calls -------------------------------------------------------------------------------------

    async def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, idempotent: bool = True
    ) -> Any:
        """Call one method; return the whole JSON body (result, total, next, time)."""
        try:
            return await with_retries(
                lambda: self._call_once(method, dict(params or {})), self.retry, idempotent=idempotent
            )
        except CRMError as exc:
            raise redact_error(exc, self._secrets()) from exc.__cause__

    def _secrets(self) -> list[str | None]:
        """What an error text must never carry: the tokens and the app secret (the webhook's
        code is found by its place in the URL)."""
        if self._auth is None or self.oauth is None:
            return []
        tokens = self._auth.tokens
        return [tokens.access_token, tokens.refresh_token, self.oauth.client_secret]

    async def _call_once(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        inner = (
            [str(c).split("?", 1)[0] for c in params.get("cmd", {}).values()]
            if method == "batch"
            else [method]
        )
        await self._pace(inner)
        refreshed = False
        while True:
            token = self._auth.tokens.access_token if self._auth else None
            try:
                return await self._send(method, params, token)
            except _ExpiredToken as exc:
                if refreshed or self._auth is None:
                    raise AuthError(
                        f"Bitrix24 rejected the token as expired{' after a refresh' if refreshed else ''}: {exc.text}",
                        crm_code="expired_token",
                        crm_text=exc.text,
                        status=401,
                    ) from None
                await self._refresh(token)
                refreshed = True

    async def _send(self, method: str, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        if self._auth is not None:
            url = f"{self._auth.client_endpoint}{method}"
            body = {**params, "auth": token}
        else:
            url = f"{self.webhook_url}{method}"
            body = params
        response = await self.http.request(
            "POST",
            url,
            content=json.dumps(body),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        data = self._decode(response, method)
        if method == "batch":
            inner = data.get("result") or {}
            times = inner.get("result_time") if isinstance(inner, Mapping) else None
            commands = params.get("cmd", {})
            if isinstance(times, Mapping):
                for key, timing in times.items():
                    self._record_time(str(commands.get(key, "")).split("?", 1)[0], timing)
        else:
            self._record_time(method, data.get("time"))
        return data

    def _decode(self, response: httpx.Response, method: str) -> dict[str, Any]:
        status = response.status_code
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # Proxies, maintenance pages and blocked webhooks answer HTML (FB24 #216).
            snippet = response.text[:200].strip().replace("\n", " ")
            text = f"Bitrix24 answered HTTP {status} with a non-JSON body ({response.headers.get('content-type', '?')}): {snippet}"
            if status >= 500 or status == 200:
                raise Retryable(text, crm_code=f"HTTP_{status}", status=status)
            if status in (401, 403):
                raise AuthError(text, crm_code=f"HTTP_{status}", status=status)
            if status == 429:
                raise RateLimited(text, crm_code=f"HTTP_{status}", status=status)
            raise PermanentError(text, crm_code=f"HTTP_{status}", status=status)
        if "error" in data and (status >= 400 or "result" not in data):
            raise self.classify(method, status, data)
        return data

    def classify(self, method: str, status: int, data: Mapping[str, Any]) -> CRMError:
        raw = data.get("error")
        if isinstance(raw, Mapping):  # REST 3.0 shape {"error": {"code", "message"}}
            code = str(raw.get("code", ""))
            text = str(raw.get("message", ""))
        else:
            code = "" if raw is None else str(raw)
            text = str(data.get("error_description") or "")
        upper = code.upper()
        text = text or code or f"HTTP {status}"
        common: dict[str, Any] = {"crm_code": code, "crm_text": text, "status": status}
        if upper == "EXPIRED_TOKEN":
            return _ExpiredToken(text)
        if upper == "QUERY_LIMIT_EXCEEDED":
            return RateLimited(f"Bitrix24 request rate limit (leaky bucket): {text}", **common)
        if upper == "OPERATION_TIME_LIMIT":
            reset_at = self.operating_reset_at.get(method)
            retry_after = max(0.0, reset_at - time.time()) if reset_at else OPERATING_WINDOW
            return RateLimited(
                f"Bitrix24 blocked {method} (operating time limit): {text}", retry_after=retry_after, **common
            )
        if upper == "OVERLOAD_LIMIT":
            return AccountBlocked(f"Bitrix24 blocked REST for this portal: {text}", **common)
        if upper == "INSUFFICIENT_SCOPE":
            scope = scope_of(method)
            return AuthError(
                f"the webhook/app lacks the {scope!r} scope needed by {method}: grant {scope!r} in Bitrix24 ({text})",
                **common,
            )
        if upper in _AUTH_CODES or status == 401:
            return AuthError(f"Bitrix24 refused the credentials for {method}: {text}", **common)
        if status >= 500:
            return Retryable(f"Bitrix24 server error on {method}: {text}", **common)
        return PermanentError(text, **common)

    # --- OAuth refresh -----------------------------------------------------------------------------

    async def refresh_if_expiring(self, within: timedelta) -> bool:
        """Refresh when the access token expires within `within`. Calls never need it (they refresh
        on expired_token, as DOCS settings/oauth/auto-renewal.md asks; scheduled hourly or daily
        refreshes can get the app blocked): the scheduler uses it only as a rare keep-alive of the
        refresh token (180 days), with a window longer than any access token's life."""
        if self._auth is None or self.oauth is None:
            return False
        if self._auth.tokens.expires_at - datetime.now(UTC) > within:
            return False
        try:
            await self._refresh(self._auth.tokens.access_token)
        except CRMError as exc:
            raise redact_error(exc, self._secrets()) from exc.__cause__
        return True

    async def _refresh(self, failed_token: str | None) -> None:
        """Refresh once per portal: concurrent callers that hit expired_token wait on the lock and
        reuse the token the first one got (DOCS settings/oauth: refresh on expired_token, not ahead)."""
        assert self._auth is not None and self.oauth is not None
        async with self._auth.lock():
            if self._auth.tokens.access_token != failed_token:
                return  # someone refreshed while we waited
            app = self.oauth
            url = f"{self._auth.oauth_server.rstrip('/')}/oauth/token/"
            query = {
                "grant_type": "refresh_token",
                "client_id": app.client_id,
                "client_secret": app.client_secret,
                "refresh_token": self._auth.tokens.refresh_token,
            }
            try:
                async with httpx.AsyncClient(timeout=30.0, verify=tls_context()) as client:
                    response = await client.get(url, params=query)
            except httpx.HTTPError as exc:
                raise Retryable(
                    f"network error refreshing the Bitrix24 token: {exc!r}", crm_code="NETWORK"
                ) from exc
            try:
                data = response.json()
            except ValueError:
                data = None
            if response.status_code >= 500:
                raise Retryable(f"OAuth server error {response.status_code}", status=response.status_code)
            if not isinstance(data, dict) or "access_token" not in data or "refresh_token" not in data:
                code = str(data.get("error", "")) if isinstance(data, dict) else ""
                text = (
                    str(data.get("error_description", "")) if isinstance(data, dict) else response.text[:200]
                )
                raise AuthError(
                    f"Bitrix24 token refresh failed ({code or response.status_code}): {text}; re-authorize the app",
                    crm_code=code or None,
                    crm_text=text or None,
                    status=response.status_code,
                )
            expires_in = float(data.get("expires_in", 3600))
            # The answer names the OAuth server to use from now on (oauth.bitrix.info, or
            # oauth.bitrix24.tech for RU portals): kept with the tokens, so the next refresh goes there.
            server = oauth_server_of(data.get("server_endpoint"), self._auth.oauth_server)
            new = TokenSet(
                access_token=str(data["access_token"]),
                refresh_token=str(data["refresh_token"]),
                expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
                extra={
                    **{
                        k: data[k]
                        for k in (
                            "member_id",
                            "client_endpoint",
                            "server_endpoint",
                            "domain",
                            "scope",
                            "user_id",
                        )
                        if k in data
                    },
                    "oauth_server": server,
                },
            )
            # The old refresh token is dead now: persist the new pair before anything uses it, so a crash
            # here never leaves us holding only a revoked token.
            await app.token_saver(new)
            self._auth.tokens = new
            self._auth.refreshes += 1
            self._auth.oauth_server = server
            endpoint = data.get("client_endpoint")
            if isinstance(endpoint, str) and endpoint.startswith("http"):
                old = origin(self._auth.client_endpoint)
                self._auth.client_endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
                if origin(endpoint) != old:  # the portal was renamed: its REST base moved
                    await self._announce_move(old, origin(endpoint))

    # --- batch -------------------------------------------------------------------------------------

    async def batch(
        self, commands: Sequence[tuple[str, str, Mapping[str, Any]]], *, idempotent: bool
    ) -> list[Outcome]:
        """Run (ref, method, params) commands packed into `batch` requests of <= 50 (halt 0).
        Per-command errors come back in result_error and become the item's PermanentError; commands
        refused by the operating-time limit are sent again after the reset (nothing was applied)."""
        outcomes: dict[int, Outcome] = {}
        pending = list(enumerate(commands))
        for _round in range(self.retry.attempts):
            if not pending:
                break
            blocked: list[tuple[int, tuple[str, str, Mapping[str, Any]]]] = []
            wait = 0.0
            for chunk in chunked(pending, MAX_BATCH):
                cmd = {f"c{index}": command(method, params) for index, (_, method, params) in chunk}
                data = await self.call("batch", {"halt": 0, "cmd": cmd}, idempotent=idempotent)
                inner = data.get("result") or {}
                results = _mapping(inner.get("result"))
                errors = _mapping(inner.get("result_error"))
                totals = _mapping(inner.get("result_total"))
                nexts = _mapping(inner.get("result_next"))
                for index, (ref, method, params) in chunk:
                    key = f"c{index}"
                    if key in errors:
                        err = (
                            errors[key]
                            if isinstance(errors[key], Mapping)
                            else {"error_description": str(errors[key])}
                        )
                        exc = self.classify(method, 400, err)
                        if isinstance(exc, RateLimited):
                            blocked.append((index, (ref, method, params)))
                            wait = max(wait, exc.retry_after or 1.0)
                            continue
                        if isinstance(exc, AuthError) and str(exc.crm_code).upper() in _ITEM_REFUSALS:
                            # The batch itself was accepted with these credentials; only this
                            # command's item is off limits. Pausing the connection would not help.
                            exc = PermanentError(
                                f"Bitrix24 refused {method} on this item: the connection's user has no "
                                f"right to change it ({exc.crm_text})",
                                crm_code=exc.crm_code,
                                crm_text=exc.crm_text,
                                status=exc.status,
                            )
                        if not isinstance(exc, PermanentError):
                            raise exc
                        exc.item_ref = ref
                        outcomes[index] = Outcome(ref, error=exc)
                    elif key in results:
                        outcomes[index] = Outcome(
                            ref,
                            results[key],
                            total=_int_or_none(totals.get(key)),
                            next=_int_or_none(nexts.get(key)),
                        )
                    else:
                        outcomes[index] = Outcome(
                            ref, error=PermanentError("no result for this command", item_ref=ref)
                        )
            pending = blocked
            if pending:
                await asyncio.sleep(wait)
        if pending:
            raise RateLimited(f"{len(pending)} batch commands stayed blocked by the operating time limit")
        return [outcomes[i] for i in range(len(commands))]


def oauth_server_of(server_endpoint: Any, current: str) -> str:
    """The OAuth server base a token answer's `server_endpoint` ("https://oauth.bitrix.info/rest/")
    names: its origin plus any path before `rest/`; the token URL is that + "/oauth/token/" (the
    pairing of the docs' examples). `current` when the value is missing or unusable, and never a
    downgrade from https, since the client secret travels there."""
    if not isinstance(server_endpoint, str):
        return current
    parts = urlsplit(server_endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return current
    if urlsplit(current).scheme == "https" and parts.scheme != "https":
        return current
    path = parts.path.rstrip("/")
    path = path[: -len("/rest")] if path.endswith("/rest") else path
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class _ExpiredToken(CRMError):
    def __init__(self, text: str) -> None:
        super().__init__(text, crm_code="expired_token", status=401)
        self.text = text


def _mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):  # empty results come back as [] (PHP arrays)
        return {str(i): v for i, v in enumerate(value)}
    return {}


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
