"""Dashboard login: the API token, once, buys a session: a signed cookie carrying a CSRF token,
backed by a row in dashboard_sessions.

The cookie is `payload.signature`, the signature an HMAC-SHA256 under a key derived from the secret
key (never from the API token, which a browser types in). The payload names the session, whose row
logging out deletes, so a copied cookie dies with the session; it also carries a fingerprint of the
API token it was bought with, so rotating the token (or the secret key) logs every browser out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Form, HTTPException, Request, Response, status
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.dashboard.models import DashboardSessionRow
from app.db import utcnow
from app.security import derived_key, fingerprint, record_auth_failure, refuse_if_throttled, tokens_match

SESSION_COOKIE = "funnelsync_session"
SESSION_MAX_AGE = 12 * 3600
CSRF_FIELD = "csrf_token"
_KEY_PURPOSE = "dashboard session v2"
_LOADED = "dashboard_session"  # request.state attribute: the session require_session/load_session found


@dataclass(frozen=True)
class DashboardSession:
    session_id: str
    csrf: str
    issued_at: int


@dataclass(frozen=True)
class CookieKeys:
    """What signs a cookie and what binds it to the current API token, derived once per app."""

    signing: bytes
    token_print: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cookie_keys(settings: Settings, api_token: str) -> CookieKeys:
    signing = derived_key(settings, _KEY_PURPOSE)
    return CookieKeys(signing=signing, token_print=fingerprint(signing, api_token))


def _sign(keys: CookieKeys, payload: str) -> str:
    return _b64(hmac.new(keys.signing, payload.encode(), hashlib.sha256).digest())


def encode_cookie(keys: CookieKeys, session: DashboardSession) -> str:
    data = {
        "sid": session.session_id,
        "csrf": session.csrf,
        "iat": session.issued_at,
        "tok": keys.token_print,
    }
    payload = _b64(json.dumps(data).encode())
    return f"{payload}.{_sign(keys, payload)}"


def decode_cookie(keys: CookieKeys, cookie: str | None, now: float | None = None) -> DashboardSession | None:
    """The session a cookie names when its signature, age and API-token fingerprint hold; whether
    the session still exists is the database's to say (load_session)."""
    if not cookie or "." not in cookie:
        return None
    payload, signature = cookie.rsplit(".", 1)
    if not tokens_match(signature, _sign(keys, payload)):
        return None
    try:
        data = json.loads(_unb64(payload))
        session = DashboardSession(str(data["sid"]), str(data["csrf"]), int(data["iat"]))
        token_print = str(data["tok"])
    except (ValueError, KeyError, TypeError):
        return None
    age = (now or time.time()) - session.issued_at
    fresh = 0 <= age <= SESSION_MAX_AGE
    return session if fresh and tokens_match(token_print, keys.token_print) else None


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


async def store_session(sessions: async_sessionmaker[AsyncSession], session: DashboardSession) -> None:
    """Record a new session; expired ones go at the same time (a login is rare, a table scan cheap)."""
    now = utcnow()
    async with sessions.begin() as db:
        await db.execute(delete(DashboardSessionRow).where(DashboardSessionRow.expires_at < now))
        db.add(
            DashboardSessionRow(
                id_digest=_digest(session.session_id),
                created_at=now,
                expires_at=now + timedelta(seconds=SESSION_MAX_AGE),
            )
        )


async def session_exists(sessions: async_sessionmaker[AsyncSession], session_id: str) -> bool:
    async with sessions() as db:
        found = await db.scalar(
            select(DashboardSessionRow.id_digest).where(
                DashboardSessionRow.id_digest == _digest(session_id),
                DashboardSessionRow.expires_at >= utcnow(),
            )
        )
    return found is not None


async def forget_session(sessions: async_sessionmaker[AsyncSession], session_id: str) -> None:
    async with sessions.begin() as db:
        await db.execute(
            delete(DashboardSessionRow).where(DashboardSessionRow.id_digest == _digest(session_id))
        )


def _app_cookie_keys(request: Request) -> CookieKeys:
    keys: CookieKeys | None = getattr(request.app.state, "dashboard_cookie_keys", None)
    if keys is None:  # derived on first use: HKDF per request would be wasted work
        keys = cookie_keys(request.app.state.settings, request.app.state.api_token)
        request.app.state.dashboard_cookie_keys = keys
    return keys


def login_token_matches(request: Request, token: str) -> bool:
    """The login form's check: 429 (with Retry-After) while this address is throttled; a wrong
    token counts towards its throttle."""
    refuse_if_throttled(request)
    expected: str = request.app.state.api_token
    if token and tokens_match(token, expected):
        return True
    record_auth_failure(request)
    return False


async def start_session(request: Request, response: Response) -> DashboardSession:
    """A new session for a browser that has just given the right token, its cookie set on `response`."""
    session = DashboardSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), int(time.time()))
    await store_session(request.app.state.sessions, session)
    response.set_cookie(
        SESSION_COOKIE,
        encode_cookie(_app_cookie_keys(request), session),
        max_age=SESSION_MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    setattr(request.state, _LOADED, session)
    return session


async def end_session(request: Request, session: DashboardSession, response: Response) -> None:
    """Log out: the session's row goes, so its cookie is refused even if it was copied."""
    await forget_session(request.app.state.sessions, session.session_id)
    response.delete_cookie(SESSION_COOKIE, path="/")
    setattr(request.state, _LOADED, None)


async def load_session(request: Request) -> DashboardSession | None:
    """The request's session if its cookie is valid and its row still exists (remembered on the
    request, so current_session can answer without the database)."""
    session = decode_cookie(_app_cookie_keys(request), request.cookies.get(SESSION_COOKIE))
    if session is not None and not await session_exists(request.app.state.sessions, session.session_id):
        session = None
    setattr(request.state, _LOADED, session)
    return session


def current_session(request: Request) -> DashboardSession | None:
    """The session load_session (or require_session) found for this request, for rendering."""
    session: DashboardSession | None = getattr(request.state, _LOADED, None)
    return session


def safe_next(target: str | None) -> str:
    """Only local paths: a crafted ?next= must not turn the login form into an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def require_session(request: Request) -> DashboardSession:
    """Page guard: no valid session -> 303 to the login form, remembering where the user was going."""
    session = await load_session(request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(
            status.HTTP_303_SEE_OTHER,
            "login required",
            headers={"Location": f"/login?next={quote(target, safe='')}"},
        )
    return session


def require_csrf(
    session: Annotated[DashboardSession, Depends(require_session)],
    csrf_token: Annotated[str, Form()] = "",
) -> DashboardSession:
    """Every state-changing form carries the session's CSRF token; anything else is refused."""
    if not csrf_token or not tokens_match(csrf_token, session.csrf):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the form's CSRF token is missing or wrong; reload the page and retry"
        )
    return session


SessionDep = Annotated[DashboardSession, Depends(require_session)]
CsrfDep = Annotated[DashboardSession, Depends(require_csrf)]
