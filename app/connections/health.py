"""Connection health from facts: when the CRM last answered, when a push last got through, and the
failures since. Callers record each CRM call where it happens (outbox delivery, the inbox's deal
fetch, reconcile, checks); `health_state` turns the facts into one word, without I/O.

It also says how a CRM failure is told to people (CLI line, HTTP problem), so that a rate-limited
account reads the same in the dashboard, the API and the terminal.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.models import Connection, ConnectionSwitch
from app.db import utcnow
from connectors.base import (
    AccountBlocked,
    AuthError,
    BatchTooLarge,
    CRMError,
    NotSupported,
    PermanentError,
    RateLimited,
    Retryable,
)

HealthState = Literal["active", "degraded", "unreachable", "paused"]

# Failing this long with no success in between (and more than one failure, so one stale failure
# followed by silence does not count as an outage) makes a connection unreachable. The outbox
# retries within minutes and reconcile runs every few minutes, so ten minutes is several tries.
UNREACHABLE_AFTER = timedelta(minutes=10)
# Error texts shown in one line (CLI, dashboard) and stored on the connection are cut to this.
TEXT_LIMIT = 300

# Failures that say the CRM is down or throttling for now, not that the request or account is bad.
_TRANSIENT = (RateLimited, Retryable)
_BY_NAME: dict[str, type[CRMError]] = {
    c.__name__: c
    for c in (RateLimited, Retryable, BatchTooLarge, AuthError, AccountBlocked, PermanentError, NotSupported)
}
_HTML_PAGE = re.compile(r"<\s*(?:!doctype|html|head|body)\b", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


# --- the state ------------------------------------------------------------------------------------


def health_state(
    *,
    status: ConnectionSwitch,
    now: datetime,
    failing_since: datetime | None,
    last_failure_class: str | None,
    consecutive_failures: int,
    unreachable_after: timedelta = UNREACHABLE_AFTER,
) -> HealthState:
    """paused: the connection is paused (auth failed, account blocked) whatever else is known.
    active: no CRM call failed since the last one that succeeded (or none was made yet).
    degraded: calls fail since `failing_since` but not yet for `unreachable_after`, or the CRM is
    rate-limiting (it answers; it only wants fewer requests).
    unreachable: every call for at least `unreachable_after` failed (two or more of them)."""
    if status == ConnectionSwitch.PAUSED:
        return "paused"
    if failing_since is None or consecutive_failures <= 0:
        return "active"
    if last_failure_class == RateLimited.__name__:
        return "degraded"
    if consecutive_failures >= 2 and now - failing_since >= unreachable_after:
        return "unreachable"
    return "degraded"


class ConnectionHealth(BaseModel):
    state: HealthState
    # Plain words on why the state is not active (None when it is).
    reason: str | None = None
    # The last CRM call that succeeded (push, deal fetch, reconcile, check) and the last push.
    last_success_at: datetime | None = None
    last_push_at: datetime | None = None
    failing_since: datetime | None = None
    last_failure_at: datetime | None = None
    last_failure: str | None = None
    consecutive_failures: int = 0


def health_of(record: Connection, now: datetime | None = None) -> ConnectionHealth:
    now = now or utcnow()
    failures = record.consecutive_failures or 0
    state = health_state(
        status=record.status,
        now=now,
        failing_since=record.failing_since,
        last_failure_class=record.last_failure_class,
        consecutive_failures=failures,
    )
    return ConnectionHealth(
        state=state,
        reason=_reason(state, record, failures),
        last_success_at=record.last_success_at,
        last_push_at=record.last_push_at,
        failing_since=record.failing_since,
        last_failure_at=record.last_failure_at,
        last_failure=record.last_failure,
        consecutive_failures=failures,
    )


def _reason(state: HealthState, record: Connection, failures: int) -> str | None:
    if state == "paused":
        return record.paused_reason
    if state == "active" or record.failing_since is None:
        return None
    since = f"{record.failing_since:%Y-%m-%d %H:%M} UTC"
    last = record.last_failure or "no error text"
    if record.last_failure_class == RateLimited.__name__:
        return f"the CRM is rate-limiting this account ({failures} refused call(s) since {since}): {last}"
    if state == "unreachable":
        return f"every CRM call has failed since {since} ({failures} failures): {last}"
    return f"{failures} CRM call(s) failed since {since}: {last}"


# --- recording ------------------------------------------------------------------------------------


async def record_success(
    sessions: async_sessionmaker[AsyncSession], connection_id: int, *, push: bool = False
) -> None:
    """The CRM answered a call (`push`: an outbox delivery): the failures since are over."""
    now = utcnow()
    values: dict[str, Any] = {"last_success_at": now, "failing_since": None, "consecutive_failures": 0}
    if push:
        values["last_push_at"] = now
    async with sessions.begin() as session:
        await session.execute(update(Connection).where(Connection.id == connection_id).values(**values))


async def record_failure(
    sessions: async_sessionmaker[AsyncSession], connection_id: int, exc: CRMError
) -> None:
    """A CRM call failed as a whole. A refusal of the request itself (validation, not supported)
    is not a failure of the CRM: it answered, so it is up, whatever failed before."""
    if isinstance(exc, PermanentError):
        async with sessions.begin() as session:
            await session.execute(
                update(Connection)
                .where(Connection.id == connection_id)
                .values(failing_since=None, consecutive_failures=0)
            )
        return
    now = utcnow()
    async with sessions.begin() as session:
        # One statement, so concurrent workers count every failure and keep the first one's time.
        await session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            .values(
                failing_since=func.coalesce(Connection.failing_since, now),
                last_failure_at=now,
                last_failure=f"{describe(exc)}: {crm_error_text(exc)}",
                last_failure_class=type(exc).__name__[:32],
                consecutive_failures=Connection.consecutive_failures + 1,
            )
        )


# --- telling people -------------------------------------------------------------------------------


def crm_error_text(exc: CRMError, limit: int = TEXT_LIMIT) -> str:
    """The CRM's error text on one line: an HTML error page (proxies, maintenance) is reduced to its
    words, whitespace collapsed, cut at `limit` characters."""
    text = exc.crm_text or exc.message or type(exc).__name__
    page = _HTML_PAGE.search(text)
    if page:  # keep what the connector said before the page, and the page's title (or its words)
        title = _TITLE.search(text, page.start())
        text = text[: page.start()] + (title.group(1) if title else _TAG.sub(" ", text[page.start() :]))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def error_from(error_class: str | None, text: str) -> CRMError:
    """The error again from what a provisioning outcome keeps (its class name and the CRM's text),
    so it is described like a raised one; the status and Retry-After are not kept."""
    cls = _BY_NAME.get(error_class or "", CRMError)
    return cls(text)


def describe(exc: CRMError) -> str:
    """What kind of failure it is, in a few words."""
    if isinstance(exc, RateLimited):
        after = f", retry after {exc.retry_after:g} s" if exc.retry_after else ""
        return f"rate-limited{after}"
    if isinstance(exc, BatchTooLarge):
        return "timed out on a large request"
    if isinstance(exc, Retryable):
        if exc.crm_code == "TIMEOUT":
            return "timed out"
        if exc.crm_code == "NETWORK":
            return "unreachable"
        return f"unavailable, HTTP {exc.status}" if exc.status else "unavailable"
    if isinstance(exc, AuthError):
        return "credentials rejected"
    if isinstance(exc, AccountBlocked):
        return "account blocked"
    if isinstance(exc, NotSupported):
        return "not supported"
    if isinstance(exc, PermanentError):
        return f"refused the request, HTTP {exc.status}" if exc.status else "refused the request"
    return "failed"


def is_transient(exc: CRMError) -> bool:
    """Rate-limited, timed out, 5xx, unreachable: the same request later may well succeed."""
    return isinstance(exc, _TRANSIENT)


def failure_line(exc: CRMError, during: str | None = None) -> str:
    """One line for people: what failed, how, and the CRM's own words."""
    where = f" during {during}" if during else ""
    return f"the CRM failed{where} ({describe(exc)}): {crm_error_text(exc)}"


@dataclass(frozen=True)
class CRMProblem:
    """A CRM failure as an HTTP answer: 503 when it is transient (Retry-After when the CRM said how
    long), 502 when the CRM refused."""

    status_code: int
    body: dict[str, Any]
    headers: dict[str, str]


def crm_problem(exc: CRMError, during: str | None = None) -> CRMProblem:
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited) and exc.retry_after:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    body = {
        "detail": failure_line(exc, during),
        "crm_error": crm_error_text(exc),
        "error_class": type(exc).__name__,
        "crm_code": exc.crm_code,
    }
    return CRMProblem(503 if is_transient(exc) else 502, body, headers)
