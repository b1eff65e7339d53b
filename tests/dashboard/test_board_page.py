"""The funnel board: overdue first, one stage paged, narrowed to a responsible user, names instead of
user ids (from a real Bitrix24 sandbox), amounts with their currency, bad input refused."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from app.analytics.board import BadBoardQuery, BoardQuery, board_query, board_view
from app.analytics.funnels import load_funnel
from app.connections.models import Connection
from app.deals.models import Deal
from tests.dashboard.support import Running, build_app, login, seed
from tests.support import web
from tests.support.crm import crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

TOKEN = "test-token-1234567890"  # tests.support.crm.settings_for


def text_of(html: str, attribute: str) -> str:
    match = re.search(rf"{attribute}[^>]*>([^<]*)<", html)
    assert match, f"{attribute} not on the page"
    return match.group(1).strip()


@pytest.fixture
def client(dashboard: Running) -> Iterator[httpx.Client]:
    with web.client(base_url=dashboard.url) as http:
        login(http)
        yield http


async def set_deals(database_url: str, ids: list[int], **values: object) -> None:
    async with open_sessions(database_url) as sessions, sessions.begin() as session:
        await session.execute(update(Deal).where(Deal.id.in_(ids)).values(**values))


def test_overdue_deals_come_first_with_their_age(client: httpx.Client, dashboard: Running) -> None:
    html = client.get(f"/funnels/{dashboard.data.funnel_id}").text
    ids = dashboard.data.deals
    # Deal 4 is past the 2-minute SLA, deal 5 arrived within it: the late one leads the column.
    assert html.index(f'data-deal="{ids["4"]}"') < html.index(f'data-deal="{ids["5"]}"')
    card = html[html.index(f'data-deal="{ids["4"]}"') :]
    assert re.search(r"data-age>[^<]*на стадии<", card)
    english = client.get(f"/funnels/{dashboard.data.funnel_id}", params={"lang": "en"}).text
    assert re.search(r"data-age>[^<]* in stage<", english)


async def test_one_stage_pages_while_the_others_stay_on_their_first_page(
    dashboard: Running, database_url: str
) -> None:
    async with open_sessions(database_url) as sessions, sessions() as session:
        ctx = await load_funnel(session, dashboard.data.funnel_id)
        first = await board_view(session, ctx, cap=1)
        second = await board_view(session, ctx, cap=1, query=BoardQuery(stage="NEW_REQUEST", page=2))
        past_end = await board_view(session, ctx, cap=1, query=BoardQuery(stage="NEW_REQUEST", page=9))
    ids = dashboard.data.deals

    def listed(view: Any, code: str) -> list[int]:
        column = next(c for c in view.board.columns if c.stage.code == code)
        return [d.id for d in column.items]

    assert listed(first, "NEW_REQUEST") == [ids["4"]] and first.columns["NEW_REQUEST"].pages == 2
    assert listed(second, "NEW_REQUEST") == [ids["5"]]
    page = second.columns["NEW_REQUEST"]
    assert (page.page, page.first, page.last) == (2, 2, 2)
    assert listed(second, "LOST") == listed(first, "LOST")  # another column: still its first page
    assert listed(past_end, "NEW_REQUEST") == [ids["5"]]  # a page past the end shows the last one
    assert second.query.url(7, "NEW_REQUEST", 3) == "/funnels/7?stage=NEW_REQUEST&page=3"


def test_the_page_links_page_one_stage(client: httpx.Client, dashboard: Running) -> None:
    funnel = dashboard.data.funnel_id
    html = client.get(f"/funnels/{funnel}", params={"stage": "NEW_REQUEST", "page": "1"}).text
    assert 'data-pager="NEW_REQUEST"' not in html  # two deals fit one page of 25: no pager
    assert text_of(html, 'data-deals="NEW_REQUEST"') == "2"


def test_the_board_narrows_to_one_responsible_user(
    client: httpx.Client, dashboard: Running, database_url: str
) -> None:
    ids = dashboard.data.deals
    asyncio.run(set_deals(database_url, [ids["4"], ids["2"]], responsible_id="7"))
    asyncio.run(set_deals(database_url, [ids["5"]], responsible_id="11"))
    funnel = dashboard.data.funnel_id
    html = client.get(f"/funnels/{funnel}", params={"responsible": "7"}).text
    assert f'data-deal="{ids["4"]}"' in html and f'data-deal="{ids["5"]}"' not in html
    assert text_of(html, 'data-deals="NEW_REQUEST"') == "1"  # the counts follow the filter
    assert text_of(html, 'data-deals="LOST"') == "1"
    assert 'data-filter="responsible"' in html
    # The select lists everyone responsible for a live deal, the chosen one selected.
    assert re.search(r'<option value="7" selected>7 \(2\)</option>', html)
    assert re.search(r'<option value="11">11 \(1\)</option>', html)
    # The CRM behind the seeded connection cannot be reached: ids are shown, and the page says so.
    assert 'data-names="unavailable"' in html


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"stage": "NOPE"}, "unknown stage &#39;NOPE&#39;"),
        ({"stage": "NEW_REQUEST", "page": "0"}, "page must be a whole number"),
        ({"stage": "NEW_REQUEST", "page": "two"}, "page must be a whole number"),
        ({"page": "2"}, "page needs the stage it pages"),
        ({"responsible": "Иван"}, "responsible must be a CRM user id"),
    ],
)
def test_bad_board_input_is_a_400_page(
    client: httpx.Client, dashboard: Running, params: dict[str, str], message: str
) -> None:
    response = client.get(f"/funnels/{dashboard.data.funnel_id}", params=params)
    assert response.status_code == 400 and message in response.text


def test_a_page_view_never_pauses_a_connection_it_cannot_reach(
    client: httpx.Client, dashboard: Running, database_url: str
) -> None:
    """The seeded connection points at 127.0.0.1, which the sync jobs refuse (and pause the
    connection for); reading user names for a page must not have that side effect."""
    assert client.get(f"/funnels/{dashboard.data.funnel_id}").status_code == 200

    async def status_of_b24() -> str | None:
        async with open_sessions(database_url) as sessions, sessions() as session:
            return await session.scalar(select(Connection.status).where(Connection.name == "b24"))

    assert asyncio.run(status_of_b24()) == "active"


def test_board_query_reads_the_query_string() -> None:
    # A small stand-in for the funnel context: board_query only reads the stage codes.
    @dataclass
    class Stage:
        code: str

    @dataclass
    class Ctx:
        stages: list[Stage]

    ctx = Ctx([Stage("NEW"), Stage("WON")])
    assert board_query(ctx, "", "", "") == BoardQuery()  # type: ignore[arg-type]
    assert board_query(ctx, "WON", "3", "15") == BoardQuery("15", "WON", 3)  # type: ignore[arg-type]
    with pytest.raises(BadBoardQuery):
        board_query(ctx, "WON", "-1", "")  # type: ignore[arg-type]


@pytest.fixture
def named(database_url: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, Running, Any]]:
    """The seeded board, its connection pointed at a real Bitrix24 sandbox portal for user names."""
    settings = settings_for(tmp_path, database_url)
    data = seed(database_url)
    with crm_sandbox("bitrix24") as sandbox:
        real = sandbox.connection(settings, name="b24")

        async def point_at_sandbox() -> None:
            async with open_sessions(database_url) as sessions, sessions.begin() as session:
                await session.execute(
                    update(Connection)
                    .where(Connection.id == data.connection_id)
                    .values(base_url=real.base_url, credentials_encrypted=real.credentials_encrypted)
                )

        asyncio.run(point_at_sandbox())
        with serve_asgi(build_app(settings)) as url, web.client(base_url=url) as http:
            response = http.post("/login", data={"token": TOKEN, "next": "/"})
            assert response.status_code == 303
            yield http, Running(url, data), sandbox.box


def test_names_amounts_and_loss_reasons_instead_of_ids(
    named: tuple[httpx.Client, Running, Any], database_url: str
) -> None:
    client, running, portal = named
    ids = running.data.deals
    asyncio.run(set_deals(database_url, [ids["4"]], responsible_id="7", currency="RUB"))
    asyncio.run(set_deals(database_url, [ids["5"]], responsible_id="9", currency="USD"))
    html = client.get(f"/funnels/{running.data.funnel_id}").text
    assert text_of(html, 'data-responsible="7"') == "Павел Орлов"
    assert re.search(r'<option value="9">Олег Кузнецов \(уволен\) \(1\)</option>', html)
    assert 'data-names="unavailable"' not in html
    # Two currencies in one column are two sums, never one.
    start = html.index('data-amount="NEW_REQUEST"')
    amount = html[start : html.index("</dd>", start)]
    assert "300.00\u00a0₽" in amount and "400.00\u00a0$" in amount
    # A lost deal's reason by its name, whether stored as a template code or a CRM id.
    lost = html[html.index('id="stage-LOST"') :]
    assert "Причина отказа: Спам" in lost and "Причина отказа: Купил у конкурента" in lost
    deal = client.get(f"/deals/{ids['4']}").text
    assert text_of(deal, 'data-responsible="7"') == "Павел Орлов"
    assert text_of(deal, "data-amount").replace("\u202f", " ") == "300.00\u00a0₽"
    lost_deal = client.get(f"/deals/{ids['3']}").text  # amoCRM-style loss_reason_id 777
    assert text_of(lost_deal, "data-label") == "Купил у конкурента"
    # Three pages, one read of the portal's staff (two pages of user.get): the names are cached.
    assert portal.stats()["by_method"]["user.get"] == 2
