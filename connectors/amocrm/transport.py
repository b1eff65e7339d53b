"""One amoCRM request: limiter, auth header, refresh-once on 401, error classification, retries.

Classification (docs/crm/amocrm.md §1-§3):
- 2xx -> parsed body; 204 -> None (an empty list).
- 400 with `validation-errors` -> ItemErrors (bulk callers map them to items by request_id).
- 401 -> refresh once (OAuth), resend; a second 401 or a long-lived token -> AuthError.
- 403 with an HTML body (the gateway's "403 Forbidden") -> AccountBlocked: the account is marked
  blocked in this process and every later call fails at once, without a request, until
  reset_account_block(). A JSON 403 (missing rights, IP whitelist) is a PermanentError.
- 429 (HTML, no Retry-After) -> RateLimited; with_retries waits at least RATE_WINDOW (amoCRM counts
  requests per second, per integration and account-wide across every integration), with jitter on top.
- 504 on a bulk write -> BatchTooLarge (the caller halves the batch); other 5xx, 504 and network
  errors -> Retryable.
- other 4xx -> PermanentError with the CRM's own text.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from connectors.amocrm.oauth import TOKEN_PATH, LongLivedAuth, OAuthAuth
from connectors.base import (
    AccountBlocked,
    AuthError,
    BatchTooLarge,
    PermanentError,
    RateLimited,
    Retryable,
)
from connectors.http import RatePolicy, RetryPolicy, ThrottledClient, redact, with_retries

_blocked: dict[str, AccountBlocked] = {}
_TITLE = re.compile(r"<title>(.*?)</title>", re.I | re.S)
_TAGS = re.compile(r"<[^>]+>")


def reset_account_block(account_key: str) -> None:
    """Call after amoCRM support lifted the block: the account may be called again."""
    _blocked.pop(account_key, None)


def blocked_error(account_key: str) -> AccountBlocked | None:
    return _blocked.get(account_key)


class ItemErrors(PermanentError):
    """400 "Request validation failed": `errors` maps request_id -> [{code, path, detail}]."""

    def __init__(self, message: str, errors: dict[str, list[dict[str, Any]]], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.errors = errors


class _Unauthorized(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def crm_text(response: httpx.Response) -> str:
    """The CRM's own words: problem+json detail/hint/title, or an HTML page's title; a webhook
    path's secret code in them (a proxy echoing a URL) redacted."""
    return redact(_crm_words(response))


def _crm_words(response: httpx.Response) -> str:
    body = response.text.strip()
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        parts = [str(data[k]) for k in ("title", "detail", "hint") if data.get(k)]
        return ": ".join(dict.fromkeys(parts)) or body[:300]
    title = _TITLE.search(body)
    if title:
        return title.group(1).strip()
    return _TAGS.sub(" ", body).strip()[:300] or f"HTTP {response.status_code}"


def _is_html(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "")
    return "html" in content_type or response.text.lstrip().startswith("<")


# amoCRM's documented limits are "N requests per second" (7 per integration, 50 for the account,
# docs/crm/amocrm.md §3), and a 429 names no Retry-After (amocrm-api-php #526): one second is the window a
# retry has to leave behind. A sped-up sandbox shrinks it with the rate (rate_window).
RATE_WINDOW = 1.0


def rate_window(rate: RatePolicy) -> float:
    """RATE_WINDOW in the time scale of `rate`, plus one request interval. amoCRM policies are N per
    second with burst N (AMOCRM_DEFAULT; the connection factory rounds the burst down), so
    burst / per_second is that second at real speed, shrunk by RatePolicy.scaled() for sandboxes run
    faster than real time. The extra interval keeps a rounded-down burst (7.5/s, burst 7) from
    making the wait shorter than the second."""
    return RATE_WINDOW * (max(1, rate.burst) + 1) / rate.per_second


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _validation_errors(data: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    if not isinstance(data, dict) or not isinstance(data.get("validation-errors"), list):
        return out
    for entry in data["validation-errors"]:
        if isinstance(entry, dict):
            raw = entry.get("errors")
            errors: list[Any] = raw if isinstance(raw, list) else []
            out.setdefault(str(entry.get("request_id", "0")), []).extend(
                e for e in errors if isinstance(e, dict)
            )
    return out


def describe(errors: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{e.get('path')}: {e.get('detail')}" if e.get("path") else str(e.get("detail")) for e in errors
    )


def classify(response: httpx.Response, *, account_key: str, bulk: bool = False) -> Any:
    """Parsed body of a successful response, or the error class the response maps to."""
    status = response.status_code
    if status == 204:
        return None
    if 200 <= status < 300:
        return response.json() if response.content else None
    text = crm_text(response)
    if status == 400:
        try:
            data = response.json()
        except ValueError:
            data = None
        errors = _validation_errors(data)
        if errors:
            flat = [e for errs in errors.values() for e in errs]
            raise ItemErrors(
                f"amoCRM rejected the request: {describe(flat)}",
                errors,
                crm_code=str(flat[0].get("code")) if flat else None,
                crm_text=describe(flat),
                status=400,
            )
        raise PermanentError(f"amoCRM rejected the request: {text}", crm_text=text, status=400)
    if status == 401:
        raise _Unauthorized(text)
    if status == 403 and _is_html(response):
        error = AccountBlocked(
            "amoCRM blocked API access for this account (403 after repeated rate-limit breaches); "
            "ask amoCRM support to unblock it, then reset the block",
            crm_text=text,
            status=403,
        )
        _blocked[account_key] = error
        raise error
    if status == 429:
        raise RateLimited(
            "amoCRM rate limit (429)", retry_after=_retry_after(response), crm_text=text, status=429
        )
    if status == 504 and bulk:
        raise BatchTooLarge("amoCRM timed out on the size of a bulk write (504)", crm_text=text, status=504)
    if status >= 500:
        raise Retryable(
            f"amoCRM server error {status}: {text}", crm_code=f"HTTP_{status}", crm_text=text, status=status
        )
    raise PermanentError(
        f"amoCRM refused the request ({status}): {text}",
        crm_code=f"HTTP_{status}",
        crm_text=text,
        status=status,
    )


class Transport:
    def __init__(
        self,
        http: ThrottledClient,
        auth: LongLivedAuth | OAuthAuth | None,
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.http = http
        self.auth = auth
        self.retry = retry
        self.sleep = sleep

    @property
    def account_key(self) -> str:
        return self.http.account_key

    def _check_blocked(self) -> None:
        error = _blocked.get(self.account_key)
        if error is not None:
            raise AccountBlocked(error.message, crm_text=error.crm_text, status=403)

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        idempotent: bool = True,
        bulk: bool = False,
    ) -> Any:
        """Send one API request under the retry policy; returns the parsed body (None for 204)."""
        self._check_blocked()
        refreshed = False

        async def attempt() -> Any:
            nonlocal refreshed
            self._check_blocked()
            if self.auth is None:
                raise AuthError("no credentials configured")
            token = await self.auth.access_token()
            response = await self._send(method, path, token, params, json_body)
            try:
                return classify(response, account_key=self.account_key, bulk=bulk)
            except _Unauthorized as exc:
                if refreshed or not self.auth.can_refresh:
                    raise AuthError(
                        f"amoCRM refused the token: {exc.text}", crm_text=exc.text, status=401
                    ) from None
            await self.auth.refresh(token)
            refreshed = True  # only now: a refresh that failed transiently may be tried again
            response = await self._send(method, path, await self.auth.access_token(), params, json_body)
            try:
                return classify(response, account_key=self.account_key, bulk=bulk)
            except _Unauthorized as exc:
                raise AuthError(
                    f"amoCRM refused the refreshed token: {exc.text}", crm_text=exc.text, status=401
                ) from None

        return await with_retries(attempt, self.retry, idempotent=idempotent, sleep=self.sleep)

    async def _send(self, method: str, path: str, token: str, params: Any, json_body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/hal+json"}
        kwargs: dict[str, Any] = {"headers": headers, "params": params}
        if json_body is not None:
            kwargs["json"] = json_body
        return await self.http.request(method, path, **kwargs)

    async def token_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /oauth2/access_token. Not resent after a timeout: the server may have rotated."""
        self._check_blocked()

        async def attempt() -> dict[str, Any]:
            response = await self.http.request(
                "POST", TOKEN_PATH, json=body, headers={"Accept": "application/json"}
            )
            if response.status_code in (400, 401, 403) and not _is_html(response):
                text = crm_text(response)
                raise AuthError(
                    f"amoCRM refused the token request: {text}", crm_text=text, status=response.status_code
                )
            try:
                data = classify(response, account_key=self.account_key)
            except _Unauthorized as exc:
                raise AuthError(
                    f"amoCRM refused the token request: {exc.text}", crm_text=exc.text, status=401
                ) from None
            if not isinstance(data, dict):
                raise AuthError("the token endpoint answered with no body")
            return data

        return await with_retries(attempt, self.retry, idempotent=False, sleep=self.sleep)
