"""The failures page's filter and retries, over real HTTP on both databases: the filter narrows both
lists, "retry all matching" touches exactly what the filter shows, the redirect keeps the filter,
failed inbox events are sent back to the processor from the page, and a bad filter or a missing
CSRF token is refused with nothing changed."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.connections.models import Connection
from app.dashboard.i18n import LABELS
from app.outbox.models import OutboxCommand
from app.outbox.statuses import KINDS
from app.webhooks.models import InboxEvent
from tests.dashboard.support import FAILED_EVENT_ERROR, T0, Running, csrf_of, login
from tests.support import web
from tests.support.db import open_sessions

TEMPLATE = Path(__file__).resolve().parents[2] / "app" / "dashboard" / "templates" / "failures.html"
AMO_EVENT_ERROR = "cannot parse webhook body: leads[status][0][id] is not a number"
AMO_DEAD = "NotFound: lead 77 is gone"
AMO_FAILED = "HTTP 503 from amoCRM"


@dataclass
class Rows:
    """What the test added on top of the seed: the amo connection's failures."""

    event: int
    dead_move: int
    failed_comment: int


@dataclass
class Page:
    client: httpx.Client
    database_url: str
    rows: Rows

    def get(self, **params: str) -> str:
        response = self.client.get("/failures", params=params)
        assert response.status_code == 200, response.text
        return response.text

    def commands(self) -> dict[int, tuple[str, str, int]]:
        """Every command: id -> (connection, status, attempts)."""
        return asyncio.run(self._commands())

    def events(self) -> dict[int, tuple[str, str | None, int]]:
        """Every inbox event: id -> (status, error, attempts)."""
        return asyncio.run(self._events())

    async def _commands(self) -> dict[int, tuple[str, str, int]]:
        query = select(OutboxCommand.id, Connection.name, OutboxCommand.status, OutboxCommand.attempts).join(
            Connection, Connection.id == OutboxCommand.connection_id
        )
        async with open_sessions(self.database_url) as sessions, sessions() as session:
            return {i: (name, status, attempts) for i, name, status, attempts in await session.execute(query)}

    async def _events(self) -> dict[int, tuple[str, str | None, int]]:
        query = select(InboxEvent.id, InboxEvent.status, InboxEvent.error, InboxEvent.attempts)
        async with open_sessions(self.database_url) as sessions, sessions() as session:
            return {
                i: (status, error, attempts) for i, status, error, attempts in await session.execute(query)
            }


async def _add_amo_failures(url: str) -> Rows:
    async with open_sessions(url) as sessions, sessions.begin() as session:
        amo = await session.scalar(select(Connection).where(Connection.name == "amo"))
        assert amo is not None
        event = InboxEvent(
            connection_id=amo.id,
            dedupe_key="amo-bad",
            content_type="application/x-www-form-urlencoded",
            body=b"leads[status][0][id]=abc",
            status="failed",
            error=AMO_EVENT_ERROR,
            attempts=1,
            received_at=T0,
        )
        dead = OutboxCommand(
            connection_id=amo.id,
            kind="move",
            payload={},
            idempotency_key="amo-move",
            status="dead",
            attempts=8,
            last_error=AMO_DEAD,
            created_at=T0 + timedelta(hours=1),
        )
        failed = OutboxCommand(
            connection_id=amo.id,
            kind="comment",
            payload={},
            idempotency_key="amo-comment",
            status="failed",
            attempts=2,
            last_error=AMO_FAILED,
            created_at=T0 + timedelta(hours=2),
        )
        session.add_all([event, dead, failed])
        await session.flush()
        return Rows(event.id, dead.id, failed.id)


@pytest.fixture
def page(dashboard: Running, database_url: str) -> Iterator[Page]:
    rows = asyncio.run(_add_amo_failures(database_url))
    with web.client(base_url=dashboard.url) as client:
        login(client)
        yield Page(client, database_url, rows)


def ids(html: str, what: str) -> list[int]:
    return [int(i) for i in re.findall(rf'<tr id="{what}-(\d+)"', html)]


def count(html: str, what: str) -> int:
    match = re.search(rf'data-count="{what}">(\d+)<', html)
    assert match, f"no {what} count on the page"
    return int(match.group(1))


def test_the_filter_narrows_both_lists(page: Page) -> None:
    everything = page.get()
    assert (count(everything, "events"), count(everything, "commands")) == (2, 5)

    amo = page.get(connection="amo")
    assert ids(amo, "event") == [page.rows.event] and AMO_EVENT_ERROR in amo
    assert ids(amo, "command") == [page.rows.failed_comment, page.rows.dead_move]
    assert FAILED_EVENT_ERROR not in amo
    assert '<option value="amo" selected>' in amo

    b24_moves = page.get(connection="b24", kind="move")
    assert count(b24_moves, "events") == 1 and page.rows.event not in ids(b24_moves, "event")
    [move] = ids(b24_moves, "command")
    assert page.commands()[move] == ("b24", "dead", 3)
    assert '<option value="move" selected>' in b24_moves

    # Kind and status narrow the commands only: a failed event has neither.
    dead = page.get(status="dead")
    assert count(dead, "events") == 2
    assert len(ids(dead, "command")) == 3 and all(
        page.commands()[i][1] == "dead" for i in ids(dead, "command")
    )
    assert re.findall(r'<tr id="command-\d+" class="st-(\w+)"', dead) == ["dead"] * 3

    none = page.get(kind="task_due")
    assert count(none, "commands") == 0 and "Нет команд с ошибкой." in none

    # Both retry forms carry the filter, so a retry acts on (and returns to) what is shown.
    filtered = page.get(connection="amo", kind="comment", status="failed")
    for name, value in (("connection", "amo"), ("kind", "comment"), ("status", "failed")):
        assert filtered.count(f'<input type="hidden" name="{name}" value="{value}">') == 2
    assert 'href="/failures">' in filtered  # clear the filter
    assert '<input type="hidden" name="connection"' not in everything


def test_retry_all_matching_touches_only_what_the_filter_shows(page: Page) -> None:
    before = page.commands()
    html = page.get(connection="b24", status="dead")
    shown = ids(html, "command")
    assert len(shown) == 2

    response = page.client.post(
        "/failures/retry",
        # A ticked row does not narrow "all matching": the filter decides.
        data={
            "csrf_token": csrf_of(html),
            "scope": "matching",
            "connection": "b24",
            "status": "dead",
            "command_id": [str(shown[0])],
        },
    )

    assert response.status_code == 303
    assert response.headers["location"] == "/failures?connection=b24&status=dead&retried=2"
    after = page.commands()
    for command_id, (connection, status, attempts) in before.items():
        if command_id in shown:
            assert (connection, after[command_id][1:]) == ("b24", ("pending", 0))
        else:
            assert after[command_id] == (connection, status, attempts)  # b24's failed task, amo's
    back = page.client.get(response.headers["location"]).text
    assert "Отправлено повторно: 2" in back and count(back, "commands") == 0
    assert '<option value="b24" selected>' in back and '<option value="dead" selected>' in back

    # A kind alone: the amo comment is the only failed or dead comment.
    comments = page.client.post(
        "/failures/retry", data={"csrf_token": csrf_of(back), "scope": "matching", "kind": "comment"}
    )
    assert comments.headers["location"] == "/failures?kind=comment&retried=1"
    assert page.commands()[page.rows.failed_comment] == ("amo", "pending", 0)
    # One row's button under a filter: that command, and back to the same filter.
    one = page.client.post(
        "/failures/retry",
        data={"csrf_token": csrf_of(back), "only": str(page.rows.dead_move), "connection": "amo"},
    )
    assert one.headers["location"] == "/failures?connection=amo&retried=1"
    remaining = {i: s for i, (_, s, _) in page.commands().items() if s in ("failed", "dead")}
    assert list(remaining.values()) == ["failed"]  # only b24's failed task was never matched


def test_bad_filters_are_refused_with_nothing_changed(page: Page) -> None:
    commands, events = page.commands(), page.events()
    unknown = page.client.get("/failures", params={"connection": "nope"})
    assert unknown.status_code == 404 and "Подключения с именем &#39;nope&#39; нет" in unknown.text
    assert '<p class="alert" role="alert">' in unknown.text and 'href="/failures"' in unknown.text
    kind = page.client.get("/failures", params={"kind": "teleport"})
    assert kind.status_code == 400 and "Неизвестный тип команды &#39;teleport&#39;" in kind.text
    assert "Неверный запрос" in kind.text
    done = page.client.get("/failures", params={"status": "done"})
    assert done.status_code == 400 and "Неизвестный статус &#39;done&#39;" in done.text

    csrf = csrf_of(page.get())
    for path in ("/failures/retry", "/failures/retry-events"):
        for form, code in (
            ({"scope": "matching", "connection": "nope"}, 404),
            ({"scope": "matching", "status": "done"}, 400),
            ({"scope": "matching", "kind": "teleport"}, 400),
            ({"scope": "everything"}, 400),
        ):
            response = page.client.post(path, data={"csrf_token": csrf, **form})
            assert response.status_code == code, (path, form, response.text)
            assert "<main" in response.text
        # No CSRF token, or a wrong one: refused before anything is read or written.
        for token in ({}, {"csrf_token": "forged"}):
            response = page.client.post(path, data={**token, "scope": "matching"})
            assert response.status_code == 403
    assert (page.commands(), page.events()) == (commands, events)


def test_failed_events_are_retried_from_the_page(page: Page) -> None:
    html = page.get(connection="b24")
    [seeded] = ids(html, "event")
    assert f'<input type="checkbox" name="event_id" value="{seeded}"' in html
    assert f'<button type="submit" name="only" value="{seeded}" aria-label="Повторить #{seeded}">' in html

    response = page.client.post(
        "/failures/retry-events", data={"csrf_token": csrf_of(html), "only": str(seeded), "connection": "b24"}
    )

    assert (
        response.status_code == 303 and response.headers["location"] == "/failures?connection=b24&retried=1"
    )
    # Pending again, for the inbox job; the last error is kept until it is processed, attempts too.
    assert page.events()[seeded] == ("pending", FAILED_EVENT_ERROR, 0)
    back = page.client.get(response.headers["location"]).text
    assert "Отправлено повторно: 1" in back and count(back, "events") == 0
    assert page.events()[page.rows.event][0] == "failed"  # the other connection's is untouched

    # "Retry all failed events" retries the filter's connection only; "selected" only the ticked.
    again = page.client.post(
        "/failures/retry-events", data={"csrf_token": csrf_of(back), "scope": "selected", "event_id": []}
    )
    assert again.headers["location"] == "/failures?retried=0"
    matching = page.client.post(
        "/failures/retry-events",
        data={"csrf_token": csrf_of(back), "scope": "matching", "connection": "amo", "kind": "move"},
    )
    assert matching.headers["location"] == "/failures?connection=amo&kind=move&retried=1"
    assert page.events()[page.rows.event] == ("pending", AMO_EVENT_ERROR, 1)
    assert [s for s, _, _ in page.events().values()].count("failed") == 0
    ticked = page.client.post(
        "/failures/retry-events",
        data={"csrf_token": csrf_of(back), "scope": "selected", "event_id": [str(seeded)]},
    )
    assert ticked.headers["location"] == "/failures?retried=0"  # already pending: nothing to do


def test_every_control_is_labelled_in_both_languages(page: Page) -> None:
    keys = set(re.findall(r't\(["\'](\w+)["\']\)', TEMPLATE.read_text("utf-8")))
    keys |= {f"kind_{kind}" for kind in KINDS}
    missing = sorted(k for k in keys if k not in LABELS or not all(LABELS[k]))
    assert not missing, f"labels without both languages: {missing}"

    for lang, words in (
        (
            "en",
            ["Retry all matching", "Retry selected events", "Retry all failed events (matching the filter)"],
        ),
        ("ru", ["Повторить все по фильтру", "Повторить выбранные события", "Фильтр"]),
    ):
        html = page.get(lang=lang, connection="amo")
        assert all(word in html for word in words), lang
        for select_id in re.findall(r'<select id="([^"]+)"', html):
            assert f'<label for="{select_id}">' in html
        checkboxes = re.findall(r'<input type="checkbox"[^>]*>', html)
        assert checkboxes and all("aria-label=" in box for box in checkboxes)
        assert "Clear the filter" in html if lang == "en" else "Сбросить фильтр" in html
