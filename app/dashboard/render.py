"""Jinja2 environment (autoescape on), display filters and the page renderer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context

from app.dashboard.auth import CSRF_FIELD, current_session
from app.dashboard.i18n import (
    DEFAULT_LANG,
    LANG_COOKIE,
    LANGUAGES,
    error_heading,
    lang_of,
    translate_message,
    translate_text,
    translator,
)
from app.db import utcnow
from app.funnels.plan import SYMBOLS

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


DURATION_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def fmt_duration(seconds: float | None, lang: str = "en") -> str:
    """Two most significant units: '45s', '2m 30s', '3h 5m', '2d 4h'; in Russian '45 с', '2 мин 30 с'."""
    if seconds is None:
        return "—"
    t = translator(lang)
    # Russian writes a space between the number and an abbreviated unit; English does not.
    gap = " " if lang == "ru" else ""
    total = round(seconds)
    if total < 60:
        return f"{total}{gap}{t('unit_s')}"
    parts: list[str] = []
    for unit, size in DURATION_UNITS:
        if total >= size:
            parts.append(f"{total // size}{gap}{t('unit_' + unit)}")
            total %= size
    return " ".join(parts[:2])


def fmt_money(value: Decimal | float | int | None) -> str:
    if value is None:
        return "—"
    # Thin no-break spaces group thousands the same way in both languages.
    return f"{Decimal(value):,.2f}".replace(",", "\u202f")


# ISO 4217 codes the CRMs use -> the sign people read; any other code is shown as it is.
CURRENCY_SIGNS = {"RUB": "₽", "RUR": "₽", "USD": "$", "EUR": "€", "KZT": "₸", "UAH": "₴", "BYN": "Br"}


def fmt_money_in(value: Decimal | float | int | None, currency: str | None) -> str:
    """An amount with its currency: '1 500.00 ₽'; without a currency just the number."""
    if value is None:
        return "—"
    code = (currency or "").strip().upper()
    sign = CURRENCY_SIGNS.get(code, code)
    # A no-break space: the sign never wraps away from its number.
    return f"{fmt_money(value)}\u00a0{sign}" if sign else fmt_money(value)


def fmt_age(entered_at: datetime | None, lang: str, now: datetime | None = None) -> str:
    """How long a deal has been in its stage: '3 h in stage' / '3 ч на стадии'."""
    if entered_at is None:
        return "—"
    entered_at = entered_at if entered_at.tzinfo else entered_at.replace(tzinfo=UTC)
    seconds = ((now or utcnow()) - entered_at).total_seconds()
    return translator(lang)("board_in_stage", age=fmt_duration(max(seconds, 0), lang))


@pass_context
def _age_filter(context: Context, entered_at: datetime | None) -> str:
    return fmt_age(entered_at, str(context.get("lang", DEFAULT_LANG)), context.get("now"))


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def fmt_ago(value: datetime | None, lang: str = "en") -> str:
    if value is None:
        return "—"
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return fmt_duration(max((utcnow() - value).total_seconds(), 0), lang)


@pass_context
def _duration_filter(context: Context, seconds: float | None) -> str:
    return fmt_duration(seconds, context.get("lang", DEFAULT_LANG))


@pass_context
def _ago_filter(context: Context, value: datetime | None) -> str:
    return fmt_ago(value, context.get("lang", DEFAULT_LANG))


@pass_context
def _message_filter(context: Context, message: str) -> str:
    return translate_message(message, context.get("lang", DEFAULT_LANG))


@pass_context
def _keyed_filter(context: Context, text: Mapping[str, Any] | None) -> str:
    return translate_text(text, context.get("lang", DEFAULT_LANG))


def plan_legend() -> list[tuple[str, list[str]]]:
    """Each symbol of a provisioning plan with the actions it marks ("!" marks two), in plan order."""
    legend: dict[str, list[str]] = {}
    for action, symbol in SYMBOLS.items():
        legend.setdefault(symbol, []).append(action)
    return list(legend.items())


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(dt=fmt_dt, duration=_duration_filter, money=fmt_money, pct=fmt_pct, ago=_ago_filter)
    env.filters.update(message=_message_filter, keyed=_keyed_filter)
    env.filters.update(money_in=fmt_money_in, age=_age_filter)  # the board and the deal page
    env.globals["plan_legend"] = plan_legend()
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
        "status_code": status_code,
        "error_heading": error_heading(status_code),
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
