"""Jinja2 environment (autoescape on), display filters and the page renderer."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.dashboard.auth import CSRF_FIELD, current_session
from app.dashboard.i18n import LANG_COOKIE, LANGUAGES, lang_of, translator
from app.db import utcnow

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
LANG_COOKIE_MAX_AGE = 365 * 86400
PARTIAL_HEADER = "x-dashboard-partial"
# Everything is served from this origin; stage colours use inline style attributes.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def fmt_dt(value: datetime | None) -> str:
    if value is None:
        return "—"
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float | None) -> str:
    """Two most significant units: '45s', '2m 30s', '3h 5m', '2d 4h'."""
    if seconds is None:
        return "—"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return " ".join(parts[:2])


def fmt_money(value: Decimal | float | int | None) -> str:
    if value is None:
        return "—"
    # Thin no-break spaces group thousands the same way in both languages.
    return f"{Decimal(value):,.2f}".replace(",", "\u202f")


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def fmt_ago(value: datetime | None) -> str:
    if value is None:
        return "—"
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return fmt_duration(max((utcnow() - value).total_seconds(), 0))


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(dt=fmt_dt, duration=fmt_duration, money=fmt_money, pct=fmt_pct, ago=fmt_ago)
    return env


ENV = _environment()


def is_partial(request: Request) -> bool:
    return request.headers.get(PARTIAL_HEADER) == "1"


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, *, status_code: int = 200
) -> HTMLResponse:
    lang = lang_of(request)
    session = current_session(request)
    page = {
        "request": request,
        "lang": lang,
        "other_langs": [code for code in LANGUAGES if code != lang],
        "t": translator(lang),
        "logged_in": session is not None,
        "csrf_field": CSRF_FIELD,
        "csrf_token": session.csrf if session else "",
        "path": request.url.path,
        "lang_url": lambda code: lang_url(request, code),
        "now": utcnow(),
        **(context or {}),
    }
    html = ENV.get_template(template).render(page)
    response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
    if request.query_params.get("lang") in LANGUAGES:
        response.set_cookie(
            LANG_COOKIE, lang, max_age=LANG_COOKIE_MAX_AGE, httponly=True, samesite="lax", path="/"
        )
    return response


def lang_url(request: Request, lang: str) -> str:
    """The current page (path and query) with ?lang= swapped, for the language switcher."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
    return f"{request.url.path}?{urlencode([*params, ('lang', lang)])}"
