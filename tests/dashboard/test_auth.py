"""Dashboard login, sessions, CSRF and the throttle of failed logins, over real HTTP on both databases
(what the cookie or the form decides, whatever the database, on SQLite only)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from app.config import Settings
from app.dashboard.auth import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    DashboardSession,
    cookie_keys,
    decode_cookie,
    encode_cookie,
)
from tests.dashboard.support import TOKEN, Running, csrf_of, login
from tests.support import web
from tests.support.matrix import on_sqlite_only

PAGES = ["/", "/failures", "/templates", "/templates/general.typical"]


@on_sqlite_only()  # decided by the cookie or the form, not by the database
@pytest.mark.parametrize("path", [*PAGES, "/funnels/1", "/funnels/1/analytics", "/deals/1"])
def test_pages_redirect_to_login_without_a_session(dashboard: Running, path: str) -> None:
    response = web.get(f"{dashboard.url}{path}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


@on_sqlite_only()  # decided by the cookie or the form, not by the database
def test_wrong_token_is_refused_with_a_message(dashboard: Running) -> None:
    with web.client(base_url=dashboard.url) as client:
        response = client.post("/login", data={"token": "nope", "next": "/"}, params={"lang": "en"})
        assert response.status_code == 401
        assert "Wrong token" in response.text
        assert SESSION_COOKIE not in client.cookies
        assert client.get("/", follow_redirects=False).status_code == 303


def test_right_token_sets_a_safe_cookie_and_opens_every_page(dashboard: Running) -> None:
    with web.client(base_url=dashboard.url) as client:
        response = client.post("/login", data={"token": TOKEN, "next": "/failures"})
        assert response.status_code == 303 and response.headers["location"] == "/failures"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        for path in PAGES:
            page = client.get(path)
            assert page.status_code == 200, (path, page.text)
            assert 'name="csrf_token"' in page.text  # the logout form
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert client.get("/login", follow_redirects=False).headers["location"] == "/"


@on_sqlite_only()  # decided by the cookie or the form, not by the database
def test_login_never_redirects_off_site(dashboard: Running) -> None:
    with web.client(base_url=dashboard.url) as client:
        response = client.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
        assert response.headers["location"] == "/"


@on_sqlite_only()  # decided by the cookie or the form, not by the database
def test_a_forged_cookie_is_not_a_session(dashboard: Running) -> None:
    with web.client(base_url=dashboard.url) as client:
        login(client)
        value = client.cookies[SESSION_COOKIE]
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
        assert client.get("/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("csrf", [None, "wrong"])
def test_posts_without_the_csrf_token_are_refused(dashboard: Running, csrf: str | None) -> None:
    with web.client(base_url=dashboard.url) as client:
        login(client)
        data = {"csrf_token": csrf} if csrf else {}
        response = client.post("/logout", data=data, follow_redirects=False)
        assert response.status_code == 403
        assert "CSRF" in response.json()["detail"]
        assert client.get("/", follow_redirects=False).status_code == 200  # still logged in


def test_logout_with_the_csrf_token(dashboard: Running) -> None:
    with web.client(base_url=dashboard.url) as client:
        login(client)
        token = csrf_of(client.get("/").text)
        response = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/login"
        assert client.get("/", follow_redirects=False).status_code == 303


def test_a_logged_out_cookie_replayed_is_refused(dashboard: Running) -> None:
    with web.client(base_url=dashboard.url) as client:
        login(client)
        cookie = client.cookies[SESSION_COOKIE]
        token = csrf_of(client.get("/").text)
        assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    with web.client(base_url=dashboard.url, cookies={SESSION_COOKIE: cookie}) as replay:
        assert replay.get("/", follow_redirects=False).status_code == 303
        assert replay.get("/login", follow_redirects=False).status_code == 200  # the form, not a loop


def _signed(key: bytes, data: dict[str, object]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    signature = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@on_sqlite_only()  # decided by the cookie or the form, not by the database
@pytest.mark.parametrize("key", [b"", TOKEN.encode(), b"funnelsync-dashboard-session-v1\0"])
def test_cookies_signed_with_a_guessable_key_are_refused(dashboard: Running, key: bytes) -> None:
    # An empty key, the API token (the old signing key) or the old context string: none of them is
    # the key derived from the secret key.
    now = int(time.time())
    claims = {"sid": "forged", "csrf": "x", "iat": now, "tok": "x"}
    with web.client(base_url=dashboard.url, cookies={SESSION_COOKIE: _signed(key, claims)}) as client:
        assert client.get("/", follow_redirects=False).status_code == 303


def test_a_cookie_is_bound_to_the_secret_key_and_the_api_token(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key=SecretStr(Fernet.generate_key().decode()))
    other_key = settings.model_copy(update={"secret_key": SecretStr(Fernet.generate_key().decode())})
    session = DashboardSession("sid", "csrf", int(time.time()))
    cookie = encode_cookie(cookie_keys(settings, TOKEN), session)
    assert decode_cookie(cookie_keys(settings, TOKEN), cookie) == session
    assert decode_cookie(cookie_keys(settings, TOKEN + "-rotated"), cookie) is None
    assert decode_cookie(cookie_keys(other_key, TOKEN), cookie) is None
    expired = time.time() + SESSION_MAX_AGE + 1
    assert decode_cookie(cookie_keys(settings, TOKEN), cookie, now=expired) is None


def test_failed_logins_are_throttled_per_address(dashboard: Running) -> None:
    allowed = Settings.model_fields["auth_failures_allowed"].default
    with web.client(base_url=dashboard.url) as client:
        for _ in range(allowed):
            assert client.post("/login", data={"token": "wrong-token", "next": "/"}).status_code == 401
        throttled = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
        assert throttled.status_code == 429  # even the right token, once throttled
        assert int(throttled.headers["retry-after"]) >= 1
        assert SESSION_COOKIE not in client.cookies
        bearer = client.get("/api/analytics/overview", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 429  # one count per address for the form and the API


def test_failed_bearer_tokens_are_throttled(dashboard: Running) -> None:
    allowed = Settings.model_fields["auth_failures_allowed"].default
    with web.client(base_url=dashboard.url) as client:
        # No token at all is not a guess: it does not count.
        for _ in range(allowed + 1):
            assert client.get("/api/analytics/overview").status_code == 401
        for _ in range(allowed):
            wrong = client.get("/api/analytics/overview", headers={"Authorization": "Bearer wrong"})
            assert wrong.status_code == 401
        throttled = client.get("/api/analytics/overview", headers={"Authorization": f"Bearer {TOKEN}"})
        assert throttled.status_code == 429 and "retry-after" in throttled.headers
        assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 429
