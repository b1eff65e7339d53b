"""Every page renders the seeded data with the right numbers, in Russian and in English."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from app.dashboard.i18n import LANG_COOKIE
from tests.dashboard.support import (
    CRM_ERROR_DEAD,
    CRM_ERROR_FAILED,
    FAILED_EVENT_ERROR,
    Running,
    csrf_of,
    login,
)
from tests.support import web


@pytest.fixture
def client(dashboard: Running) -> Iterator[httpx.Client]:
    with web.client(base_url=dashboard.url) as http:
        login(http)
        yield http


def value(html: str, attribute: str) -> str:
    """Text of the first element carrying `attribute` (e.g. 'data-outbox="dead"')."""
    match = re.search(rf"{attribute}[^>]*>([^<]*)<", html)
    assert match, f"{attribute} not on the page"
    return match.group(1).strip()


def row(html: str, attribute: str) -> str:
    match = re.search(rf"<tr [^>]*{attribute}[^>]*>(.*?)</tr>", html, re.S)
    assert match, f"no row with {attribute}"
    return match.group(1)


def test_overview_shows_health_and_queues(client: httpx.Client) -> None:
    page = client.get("/").text
    amo, html = page.split('<section class="card"')[1:3]  # connections in name order
    assert "amoCRM refused the refresh token" in amo and value(amo, 'data-outbox="dead"') == "0"
    # The expired OAuth token and the hook amoCRM had disabled (and FunnelSync re-enabled).
    assert re.search(r'data-metric="token-expires"><time [^>]*class="bad">2026-11-01 08:00', amo)
    assert "истёк" in amo
    assert 'data-webhook="re-enabled"' in amo and "CRM отключила наш вебхук" in amo
    assert "b24" in html
    assert "бессрочный" in value(html, 'data-metric="token-expires"')
    assert value(html, 'data-outbox="dead"') == "2" and value(html, 'data-outbox="done"') == "3"
    assert value(html, 'data-events="failed"') == "1" and value(html, 'data-events="processed"') == "2"
    assert value(html, 'data-metric="dead-letters"') == "2"
    assert "C5:UC_HAND" in html  # unknown stage
    assert 'href="/funnels/' in html and "/analytics" in html


def test_overview_partial_is_the_live_fragment(client: httpx.Client) -> None:
    html = client.get("/", headers={"X-Dashboard-Partial": "1"}).text
    assert "<html" not in html and 'data-outbox="dead"' in html


def test_failures_show_error_texts_and_retry_from_the_page(client: httpx.Client) -> None:
    html = client.get("/failures").text
    assert FAILED_EVENT_ERROR in html and "event=ONCRMDEALUPDATE" in html
    assert CRM_ERROR_DEAD in html and CRM_ERROR_FAILED in html
    assert value(html, 'data-count="commands"') == "3" and value(html, 'data-count="events"') == "1"
    dead = re.findall(r'<tr id="command-(\d+)" class="st-dead">', html)
    assert len(dead) == 2

    refused = client.post("/failures/retry", data={"csrf_token": "forged", "only": dead[0]})
    assert refused.status_code == 403
    one = client.post("/failures/retry", data={"csrf_token": csrf_of(html), "only": dead[0]})
    assert one.status_code == 303 and one.headers["location"] == "/failures?retried=1"
    after = client.get(one.headers["location"]).text
    assert "Отправлено повторно: 1" in after and value(after, 'data-count="commands"') == "2"
    rest = client.post(
        "/failures/retry", data={"csrf_token": csrf_of(after), "scope": "matching", "status": "dead"}
    )
    assert rest.headers["location"] == "/failures?status=dead&retried=1"
    selected = client.post(
        "/failures/retry", data={"csrf_token": csrf_of(after), "scope": "selected", "command_id": []}
    )
    assert selected.headers["location"] == "/failures?retried=0"  # nothing ticked, nothing queued
    assert value(client.get("/failures").text, 'data-count="commands"') == "1"  # only the failed one left


def test_board_counts_and_highlights_overdue_deals(client: httpx.Client, dashboard: Running) -> None:
    html = client.get(f"/funnels/{dashboard.data.funnel_id}").text
    assert value(html, 'data-deals="NEW_REQUEST"') == "2"
    assert value(html, 'data-amount="NEW_REQUEST"').replace("\u202f", " ") == "700.00"
    assert value(html, 'data-overdue="NEW_REQUEST"') == "1"
    assert value(html, 'data-deals="LOST"') == "4"
    ids = dashboard.data.deals
    overdue = re.search(rf'<li class="([^"]*)" data-deal="{ids["4"]}"', html)
    fresh = re.search(rf'<li class="([^"]*)" data-deal="{ids["5"]}"', html)
    assert overdue and overdue.group(1) == "deal overdue"
    assert fresh and fresh.group(1) == "deal"
    # Overdue first within the column, then newest arrival.
    assert html.index(f'data-deal="{ids["4"]}"') < html.index(f'data-deal="{ids["5"]}"')
    assert "Новая заявка" in html and "(New request)" not in html  # Russian by default


def test_analytics_page_numbers(client: httpx.Client, dashboard: Running) -> None:
    html = client.get(
        f"/funnels/{dashboard.data.funnel_id}/analytics", params={"from": "2026-11-01", "to": "2026-11-01"}
    ).text
    new = row(html, 'data-stage="NEW_REQUEST"')
    assert value(new, "data-reached") == "5" and value(new, "data-to-next") == "2"
    assert value(new, "data-to-next-pct") == "40.0%" and value(new, "data-to-won-pct") == "20.0%"
    times = html[html.index('id="times"') :]
    assert value(row(times, 'data-stage="NEW_REQUEST"'), "data-median") == "17 мин 30 с"  # 1050 s
    assert value(row(times, 'data-stage="QUALIFIED"'), "data-median") == "1 ч 15 мин"  # 4500 s
    assert value(html, "data-lost") == "4"
    assert value(row(html, 'data-reason="spam"'), "data-deals") == "2"
    assert value(row(html, 'data-reason="bought_elsewhere"'), "data-deals") == "1"
    assert value(row(html, 'data-temperature="cold"'), "data-deals") == "4"
    assert value(row(html, 'data-temperature="warm"'), "data-deals") == "3"
    assert '<svg class="funnel"' in html and 'value="2026-11-01"' in html


def test_analytics_page_rejects_a_bad_period(client: httpx.Client, dashboard: Running) -> None:
    response = client.get(f"/funnels/{dashboard.data.funnel_id}/analytics", params={"from": "soon"})
    assert response.status_code == 422 and "не дата (ГГГГ-ММ-ДД)" in response.text


def test_deal_page_history_and_commands(client: httpx.Client, dashboard: Running) -> None:
    html = client.get(f"/deals/{dashboard.data.deals['1']}").text
    history = html[html.index('id="deal-history"') : html.index('id="deal-commands"')]
    assert history.count("<tr>") == 5  # header + four transitions
    assert "Сделка закрыта (Успешная сделка)" in history
    commands = html[html.index('id="deal-commands"') :]
    assert commands.count('id="command-') == 3 and CRM_ERROR_DEAD in commands


def test_missing_things_are_404_pages(client: httpx.Client) -> None:
    for path in ("/funnels/999", "/deals/999", "/templates/nope.nope", "/funnels/999/analytics"):
        response = client.get(path)
        assert response.status_code == 404 and "<main" in response.text


def test_templates_filter_and_preview(client: httpx.Client) -> None:
    html = client.get("/templates", params={"niche": "general"}).text
    assert re.findall(r'data-template="([^"]+)"', html) == ["general.typical"]
    assert len(re.findall(r"data-template=", client.get("/templates").text)) > 40
    preview = client.get("/templates/general.typical").text
    assert "Новая заявка" in preview and "temp-warm" in preview and 'data-reason="spam"' in preview


def test_language_switch_is_remembered(client: httpx.Client, dashboard: Running) -> None:
    english = client.get("/", params={"lang": "en"})
    assert "Dead letters" in english.text and '<html lang="en">' in english.text
    assert client.cookies[LANG_COOKIE] == "en"
    board = client.get(f"/funnels/{dashboard.data.funnel_id}").text  # no ?lang: the cookie decides
    # Russian stage names stay, the English translation is shown beside them.
    assert "Новая заявка" in board and "(New request)" in board and "Deals" in board
    russian = client.get("/", params={"lang": "ru"}).text
    assert "Мёртвые письма" in russian and "Dead letters" not in russian


def test_static_files_are_served(dashboard: Running) -> None:
    css = web.get(f"{dashboard.url}/static/dashboard/dashboard.css")
    assert css.status_code == 200 and "focus-visible" in css.text
    assert web.get(f"{dashboard.url}/static/dashboard/../pages.py").status_code == 404


def test_a_funnel_without_deals_or_template_still_renders(client: httpx.Client, dashboard: Running) -> None:
    funnel = dashboard.data.empty_funnel_id
    board = client.get(f"/funnels/{funnel}", params={"lang": "en"})
    assert board.status_code == 200 and "Новая" in board.text and "No deals" in board.text
    analytics = client.get(f"/funnels/{funnel}/analytics")
    assert (
        analytics.status_code == 200 and value(row(analytics.text, 'data-stage="NEW"'), "data-reached") == "0"
    )


def test_template_page_lists_automations_and_the_bot(client: httpx.Client) -> None:
    html = client.get("/templates/medical.new_clients").text
    automations = html[html.index('id="tpl-automations"') :]
    reminder = automations[automations.index('data-automation="visit_reminder"') :]
    assert 'data-trigger="before_date"' in reminder and "<code>visit_at</code>" in reminder
    assert 'data-action="notify"' in reminder and "Telegram → SMS" in reminder
    assert "Напоминаем, что завтра, {deal.visit_at}" in reminder
    english = client.get("/templates/by_goal.qualification", params={"lang": "en"}).text
    nudge = english[english.index('data-automation="no_answer_to_no_contact"') :]
    assert nudge.index("(derived)") < nudge.index("</h3>")  # the derived marker sits in its heading
    bot = english[english.index('id="tpl-qualification"') :]
    assert 'data-question="authority"' in bot and "4 / 6" in bot
