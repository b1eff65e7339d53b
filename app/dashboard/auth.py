"""Dashboard login: the API token, once, buys a signed session cookie carrying a CSRF token.

The cookie is `payload.signature` where the signature is HMAC-SHA256 keyed with the API token, so
rotating the token logs every browser out, and nothing is stored server-side. itsdangerous is not a
dependency, and this is all it would do for us here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Form, HTTPException, Request, status

from app.security import tokens_match

SESSION_COOKIE = "funnelsync_session"
SESSION_MAX_AGE = 12 * 3600
CSRF_FIELD = "csrf_token"
_CONTEXT = b"funnelsync-dashboard-session-v1\0"


@dataclass(frozen=True)
class DashboardSession:
    csrf: str
    issued_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(token: str, payload: str) -> str:
    return _b64(hmac.new(token.encode(), _CONTEXT + payload.encode(), hashlib.sha256).digest())


def issue_session(token: str, now: float | None = None) -> tuple[str, DashboardSession]:
    session = DashboardSession(csrf=secrets.token_urlsafe(32), issued_at=int(now or time.time()))
    payload = _b64(json.dumps({"csrf": session.csrf, "iat": session.issued_at}).encode())
    return f"{payload}.{_sign(token, payload)}", session


def read_session(token: str, cookie: str | None, now: float | None = None) -> DashboardSession | None:
    if not cookie or "." not in cookie:
        return None
    payload, signature = cookie.rsplit(".", 1)
    if not tokens_match(signature, _sign(token, payload)):
        return None
    try:
        data = json.loads(_unb64(payload))
        session = DashboardSession(csrf=str(data["csrf"]), issued_at=int(data["iat"]))
    except (ValueError, KeyError, TypeError):
        return None
    age = (now or time.time()) - session.issued_at
    return session if 0 <= age <= SESSION_MAX_AGE else None


def safe_next(target: str | None) -> str:
    """Only local paths: a crafted ?next= must not turn the login form into an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def current_session(request: Request) -> DashboardSession | None:
    token: str = request.app.state.api_token
    return read_session(token, request.cookies.get(SESSION_COOKIE))


def require_session(request: Request) -> DashboardSession:
    """Page guard: no valid cookie -> 303 to the login form, remembering where the user was going."""
    session = current_session(request)
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
