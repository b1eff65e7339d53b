"""Dashboard login and CSRF over real HTTP, on both databases."""

from __future__ import annotations

import httpx
import pytest

from app.dashboard.auth import SESSION_COOKIE
from tests.dashboard.support import TOKEN, Running, csrf_of, login

PAGES = ["/", "/failures", "/templates", "/templates/general.typical"]


@pytest.mark.parametrize("path", [*PAGES, "/funnels/1", "/funnels/1/analytics", "/deals/1"])
def test_pages_redirect_to_login_without_a_session(dashboard: Running, path: str) -> None:
    response = httpx.get(f"{dashboard.url}{path}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


def test_wrong_token_is_refused_with_a_message(dashboard: Running) -> None:
    with httpx.Client(base_url=dashboard.url) as client:
        response = client.post("/login", data={"token": "nope", "next": "/"}, params={"lang": "en"})
        assert response.status_code == 401
        assert "Wrong token" in response.text
        assert SESSION_COOKIE not in client.cookies
        assert client.get("/", follow_redirects=False).status_code == 303


def test_right_token_sets_a_safe_cookie_and_opens_every_page(dashboard: Running) -> None:
    with httpx.Client(base_url=dashboard.url) as client:
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


def test_login_never_redirects_off_site(dashboard: Running) -> None:
    with httpx.Client(base_url=dashboard.url) as client:
        response = client.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
        assert response.headers["location"] == "/"


def test_a_forged_cookie_is_not_a_session(dashboard: Running) -> None:
    with httpx.Client(base_url=dashboard.url) as client:
        login(client)
        value = client.cookies[SESSION_COOKIE]
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
        assert client.get("/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("csrf", [None, "wrong"])
def test_posts_without_the_csrf_token_are_refused(dashboard: Running, csrf: str | None) -> None:
    with httpx.Client(base_url=dashboard.url) as client:
        login(client)
        data = {"csrf_token": csrf} if csrf else {}
        response = client.post("/logout", data=data, follow_redirects=False)
        assert response.status_code == 403
        assert "CSRF" in response.json()["detail"]
        assert client.get("/", follow_redirects=False).status_code == 200  # still logged in


def test_logout_with_the_csrf_token(dashboard: Running) -> None:
    with httpx.Client(base_url=dashboard.url) as client:
        login(client)
        token = csrf_of(client.get("/").text)
        response = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/login"
        assert client.get("/", follow_redirects=False).status_code == 303
