"""The overview's summary strip (late deals, dead letters, failing connections, each a link to where
they are listed) and "first run in ~N min" before a connection's first reconcile."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.analytics.overview import first_reconcile_eta
from app.connections.models import Connection
from tests.dashboard.support import Running, login
from tests.support import web


@pytest.fixture
def client(dashboard: Running) -> Iterator[httpx.Client]:
    with web.client(base_url=dashboard.url) as http:
        login(http)
        yield http


def tile(html: str, item: str) -> tuple[str, int]:
    match = re.search(
        r'href="([^"]*)"[^>]*>?<span class="n">(\d+)</span>',
        html[html.index(f'data-summary-item="{item}"') :],
    )
    assert match, f"no {item} tile"
    return match.group(1), int(match.group(2))


def test_the_strip_counts_what_needs_a_person_and_links_to_it(
    client: httpx.Client, dashboard: Running
) -> None:
    html = client.get("/").text
    board = client.get(f"/funnels/{dashboard.data.funnel_id}").text
    overdue_on_board = sum(int(n) for n in re.findall(r'data-overdue="[^"]+"[^>]*>(\d+)<', board))
    assert overdue_on_board > 0
    assert tile(html, "late") == (f"/funnels/{dashboard.data.funnel_id}", overdue_on_board)
    assert tile(html, "dead") == ("/failures?status=dead", 2)  # the seeded dead move and fields
    link, failing = tile(html, "failing")
    assert failing == 1 and link.startswith("#conn-")  # the paused amoCRM connection's card
    assert f'id="{link[1:]}"' in html
    assert f'data-late="{dashboard.data.funnel_id}"' in html  # and next to the funnel itself
    # The live refresh fragment carries the strip too.
    partial = client.get("/", headers={"X-Dashboard-Partial": "1"}).text
    assert "data-summary" in partial and "<html" not in partial


def test_before_the_first_reconcile_the_page_says_when_it_runs(client: httpx.Client) -> None:
    html = client.get("/").text
    reconcile = re.findall(r'data-metric="reconcile">(.*?)</dd>', html)
    assert reconcile and all(re.search(r"первый запуск (через ~\d+ мин|вот-вот)", r) for r in reconcile)
    english = client.get("/", params={"lang": "en"}).text
    assert re.search(r"first run (in ~\d+ min|due now)", english)


@pytest.mark.parametrize(
    ("age", "interval", "minutes"),
    [
        (timedelta(0), 300, 5),
        (timedelta(seconds=61), 300, 4),  # 3 min 59 s left: rounded up
        (timedelta(minutes=4, seconds=59), 300, 1),
        (timedelta(minutes=5), 300, 0),  # due
        (timedelta(hours=2), 300, 0),  # the scheduler was not running: due, never negative
        (timedelta(minutes=10), 3600, 50),
    ],
)
def test_first_reconcile_eta(age: timedelta, interval: float, minutes: int) -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    record = Connection(
        name="x", crm="bitrix24", base_url="https://x", credentials_encrypted="", created_at=now - age
    )
    assert first_reconcile_eta(record, interval, now) == minutes
