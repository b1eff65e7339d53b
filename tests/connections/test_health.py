"""Connection health through a CRM outage: the outbox worker, the inbox's deal fetch and reconcile
record what the CRM answered; the API status, `connections list --json` and the overview page show
degraded / unreachable with the last successful push, and active again once the CRM is back.
Both CRMs where the path exists for both, both databases."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.connections.health import (
    UNREACHABLE_AFTER,
    crm_error_text,
    crm_problem,
    describe,
    health_state,
)
from app.connections.models import Connection
from app.connections.registry import ConnectorRegistry
from app.main import create_app
from app.outbox.delivery import drain_connection
from app.scheduler import RECONCILE_JOB, Runtime, run_reconcile
from app.webhooks.processor import process_inbox
from app.webhooks.service import store_event
from connectors.base import (
    AccountBlocked,
    AuthError,
    BatchTooLarge,
    CRMConnector,
    CRMError,
    NotSupported,
    PermanentError,
    RateLimited,
    Retryable,
)
from connectors.events import parse_deal_events
from tests.outbox.conftest import NO_DELAY, OUTAGE_FAULT, Outbox, open_outbox
from tests.support import web
from tests.support.cli import run_cli
from tests.support.matrix import each_crm_on_one_database
from tests.support.server import serve_asgi

AUTH = {"Authorization": "Bearer test-token-1234567890"}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)

# --- the state, from facts alone ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "failing_for", "last_class", "failures", "expected"),
    [
        ("active", None, None, 0, "active"),  # never failed (or never called)
        ("active", None, "Retryable", 0, "active"),  # failed once, a success since
        ("active", MINUTE, "Retryable", 1, "degraded"),
        ("active", 30 * MINUTE, "Retryable", 1, "degraded"),  # one stale failure is not an outage
        ("active", 9 * MINUTE, "Retryable", 40, "degraded"),  # not long enough yet
        ("active", UNREACHABLE_AFTER, "Retryable", 2, "unreachable"),
        ("active", 3 * UNREACHABLE_AFTER, "BatchTooLarge", 12, "unreachable"),
        ("active", 3 * UNREACHABLE_AFTER, "RateLimited", 50, "degraded"),  # it answers, only slower
        ("active", MINUTE, "RateLimited", 1, "degraded"),
        ("paused", 3 * UNREACHABLE_AFTER, "AuthError", 9, "paused"),
        ("paused", None, None, 0, "paused"),
    ],
)
def test_health_state(
    status: str, failing_for: timedelta | None, last_class: str | None, failures: int, expected: str
) -> None:
    since = NOW - failing_for if failing_for is not None else None
    state = health_state(
        status=status,
        now=NOW,
        failing_since=since,
        last_failure_class=last_class,
        consecutive_failures=failures,
    )
    assert state == expected


@pytest.mark.parametrize(
    ("error", "status_code", "kind", "retry_after"),
    [
        (RateLimited("Too many requests", retry_after=2.5, crm_code="QUERY_LIMIT_EXCEEDED"), 503,
         "rate-limited, retry after 2.5 s", "3"),
        (RateLimited("429", status=429), 503, "rate-limited", None),
        (Retryable("timed out calling x", crm_code="TIMEOUT"), 503, "timed out", None),
        (Retryable("connection refused", crm_code="NETWORK"), 503, "unreachable", None),
        (Retryable("<html>", crm_code="HTTP_503", status=503), 503, "unavailable, HTTP 503", None),
        (BatchTooLarge("504", status=504), 503, "timed out on a large request", None),
        (AuthError("invalid_token", status=401), 502, "credentials rejected", None),
        (AccountBlocked("Forbidden", status=403), 502, "account blocked", None),
        (PermanentError("bad field", status=400), 502, "refused the request, HTTP 400", None),
        (NotSupported("no loss reasons"), 502, "not supported", None),
        (CRMError("odd"), 502, "failed", None),
    ],
)  # fmt: skip
def test_crm_failures_map_to_503_when_transient_and_502_when_refused(
    error: CRMError, status_code: int, kind: str, retry_after: str | None
) -> None:
    problem = crm_problem(error, "provisioning")
    assert problem.status_code == status_code
    assert describe(error) == kind
    assert problem.body["detail"].startswith(f"the CRM failed during provisioning ({kind}): ")
    assert problem.body["error_class"] == type(error).__name__
    assert problem.headers.get("Retry-After") == retry_after


def test_an_html_error_page_is_told_by_its_title_on_one_line() -> None:
    page = (
        "Bitrix24 answered HTTP 503 with a non-JSON body (text/html): <html><head><title>503 Service "
        "Temporarily Unavailable</title></head>\n<body><h1>503</h1><hr><center>nginx</center></body></html>"
    )
    assert crm_error_text(Retryable(page)) == (
        "Bitrix24 answered HTTP 503 with a non-JSON body (text/html): 503 Service Temporarily Unavailable"
    )
    # Not a page: angle brackets stay; long texts are cut.
    assert crm_error_text(PermanentError("value must be < 10 and > 2")) == "value must be < 10 and > 2"
    assert len(crm_error_text(PermanentError("x" * 1000))) == 300


# --- through an outage, end to end ----------------------------------------------------------------


@pytest.fixture
async def outbox(crm: str, database_url: str, tmp_path: Path) -> AsyncIterator[Outbox]:
    async with open_outbox(crm, database_url, tmp_path) as box:
        yield box


@dataclass
class Views:
    """The three places an operator looks: the API status, `connections list --json`, the overview."""

    api: httpx.AsyncClient
    dashboard: httpx.AsyncClient
    env: dict[str, str]
    name: str

    async def api_health(self) -> dict[str, Any]:
        response = await self.api.get(f"/api/connections/{self.name}/status")
        assert response.status_code == 200, response.text
        health: dict[str, Any] = response.json()["health"]
        return health

    def cli_health(self) -> dict[str, Any]:
        listed = run_cli("connections", "list", "--json", env=self.env)
        assert listed.returncode == 0, listed.stderr
        [row] = [r for r in json.loads(listed.stdout) if r["name"] == self.name]
        health: dict[str, Any] = row["health"]
        return health

    async def overview(self) -> str:
        response = await self.dashboard.get("/")
        assert response.status_code == 200
        return response.text

    async def assert_everywhere(self, state: str, last_push_at: datetime) -> dict[str, Any]:
        """Each view shows `state` and the same last successful push; returns the API's health."""
        api = await self.api_health()
        cli = self.cli_health()
        page = await self.overview()
        for shown in (api, cli):
            assert shown["state"] == state, shown
            assert datetime.fromisoformat(shown["last_push_at"]) == last_push_at
        assert f'data-health="{state}"' in page
        pushed = re.search(r'data-metric="last-push"><time datetime="([^"]+)"', page)
        assert pushed and datetime.fromisoformat(pushed.group(1)) == last_push_at
        return api


@pytest.fixture
async def views(outbox: Outbox, database_url: str, tmp_path: Path) -> AsyncIterator[Views]:
    settings = outbox.settings
    env = {
        "FUNNELSYNC_DATABASE_URL": database_url,
        "FUNNELSYNC_DATA_DIR": str(tmp_path / "cli"),
        "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true",  # the sandboxes run on 127.0.0.1
        "FUNNELSYNC_SECRET_KEY": settings.secret_key.get_secret_value() if settings.secret_key else "",
        "FUNNELSYNC_PUBLIC_URL": "http://127.0.0.1:9",
    }
    with serve_asgi(create_app(settings)) as url:
        async with (
            web.async_client(base_url=url, headers=AUTH, timeout=30) as api,
            web.async_client(base_url=url, timeout=30) as dashboard,
        ):
            login = await dashboard.post("/login", data={"token": "test-token-1234567890", "next": "/"})
            assert login.status_code == 303
            yield Views(api, dashboard, env, outbox.crm)


async def backdate_failures(outbox: Outbox, by: timedelta) -> None:
    """Stands for the outage going on for `by`: the first failure happened that much earlier."""
    async with outbox.sessions.begin() as session:
        record = await session.get(Connection, outbox.connection_id)
        assert record is not None and record.failing_since is not None
        record.failing_since = record.failing_since - by


@each_crm_on_one_database(crossed=True)
async def test_an_outage_shows_degraded_then_unreachable_then_active_again(
    outbox: Outbox, views: Views
) -> None:
    connector = outbox.connector()
    first, second = outbox.seed(2)
    await outbox.enqueue_comment(first, "before the outage")
    [delivered] = await outbox.drain(connector)
    assert delivered.delivered == 1
    pushed_at = (await outbox.record()).last_push_at
    assert pushed_at is not None
    healthy = await views.assert_everywhere("active", pushed_at)
    assert healthy["reason"] is None and healthy["consecutive_failures"] == 0

    # The CRM goes down: the worker's delivery fails (each drain exhausts the connector's retries).
    outbox.box.fault(OUTAGE_FAULT[outbox.crm], count=10_000)
    await outbox.enqueue_comment(second, "during the outage")
    failed = await drain_connection(outbox.sessions, await outbox.record(), connector, retry=NO_DELAY)
    assert failed.delivered == 0 and failed.retried == 1
    degraded = await views.assert_everywhere("degraded", pushed_at)
    assert degraded["consecutive_failures"] == 1 and "HTTP 503" in degraded["last_failure"]
    assert "1 CRM call(s) failed since" in degraded["reason"]
    assert "data-health-reason" in await views.overview()

    # It stays down: the next retry fails too, and the outage has lasted past UNREACHABLE_AFTER.
    await outbox.make_due()
    again = await drain_connection(outbox.sessions, await outbox.record(), connector, retry=NO_DELAY)
    assert again.delivered == 0
    await backdate_failures(outbox, UNREACHABLE_AFTER)
    unreachable = await views.assert_everywhere("unreachable", pushed_at)
    assert (
        unreachable["consecutive_failures"] == 2
        and "every CRM call has failed since" in unreachable["reason"]
    )
    assert datetime.fromisoformat(unreachable["last_success_at"]) == pushed_at

    # The CRM is back: the next drain delivers, and every view is green with the new push time.
    outbox.sandbox.clear_faults()
    await outbox.make_due()
    [recovered] = await outbox.drain(connector)
    assert recovered.delivered == 1
    record = await outbox.record()
    assert record.last_push_at is not None and record.last_push_at > pushed_at
    back = await views.assert_everywhere("active", record.last_push_at)
    assert back["reason"] is None and back["failing_since"] is None
    # The last error stays on record, with its time, after the recovery.
    assert back["last_failure_at"] is not None and "HTTP 503" in back["last_failure"]


class FixedConnectors(ConnectorRegistry):
    """The worker's registry handing out one given connector (fast retries), not one it builds."""

    def __init__(self, settings: Settings, outbox: Outbox, connector: CRMConnector) -> None:
        super().__init__(outbox.sessions, settings)
        self.connector = connector

    async def get(self, record: Connection) -> CRMConnector:
        return self.connector


@each_crm_on_one_database()
async def test_reconcile_records_the_outage_and_the_recovery(outbox: Outbox) -> None:
    runtime = Runtime(
        outbox.sessions, outbox.settings, FixedConnectors(outbox.settings, outbox, outbox.connector())
    )
    outbox.box.fault(OUTAGE_FAULT[outbox.crm], count=10_000)
    await run_reconcile(runtime)
    # Retrying the 503, the turn gave its slot back and goes on in the background until it gives up.
    await runtime.pool(RECONCILE_JOB).wait_idle()
    record = await outbox.record()
    assert record.consecutive_failures == 1 and record.failing_since is not None
    assert record.last_success_at is None and record.last_failure and "HTTP 503" in record.last_failure

    outbox.sandbox.clear_faults()
    await run_reconcile(runtime)
    await runtime.pool(RECONCILE_JOB).wait_idle()
    record = await outbox.record()
    assert record.failing_since is None and record.consecutive_failures == 0
    assert record.last_success_at is not None and record.last_push_at is None  # a read, not a push


# Only Bitrix24 events name a deal without its data (amoCRM's carry the lead): nothing to fetch there.
@pytest.mark.parametrize("crm", ["bitrix24"])
async def test_the_inbox_deal_fetch_records_the_outage_and_the_recovery(outbox: Outbox) -> None:
    [deal] = outbox.seed(1)
    body = f"event=ONCRMDEALUPDATE&data[FIELDS][ID]={deal}&ts=1700000000&auth[application_token]=x".encode()
    async with outbox.sessions.begin() as session:
        assert await store_event(
            session, outbox.connection_id, "e1", body, "application/x-www-form-urlencoded"
        )
    connector = outbox.connector()

    async def connector_for(record: Connection) -> CRMConnector:
        return connector

    outbox.box.fault(OUTAGE_FAULT[outbox.crm], count=10_000)
    deferred = await process_inbox(outbox.sessions, connector_for, parse_deal_events)
    assert deferred.deferred == 1
    record = await outbox.record()
    assert record.consecutive_failures == 1 and record.failing_since is not None

    outbox.sandbox.clear_faults()
    done = await process_inbox(outbox.sessions, connector_for, parse_deal_events)
    assert done.processed == 1
    record = await outbox.record()
    assert record.failing_since is None and record.last_success_at is not None


@each_crm_on_one_database(crossed=True)
async def test_a_refusal_after_an_outage_ends_it(outbox: Outbox) -> None:
    """A CRM that answers "invalid" is up: the outage before it is over (per-command refusals in a
    Bitrix24 batch, or amoCRM refusing the whole request)."""
    connector = outbox.connector()
    [deal] = outbox.seed(1)
    elsewhere = await outbox.foreign_stage()  # a move there is refused as invalid
    outbox.box.fault(OUTAGE_FAULT[outbox.crm], count=10_000)
    await outbox.enqueue_moves([deal], elsewhere)
    await drain_connection(outbox.sessions, await outbox.record(), connector, retry=NO_DELAY)
    assert (await outbox.record()).failing_since is not None

    outbox.sandbox.clear_faults()
    await outbox.make_due()
    [refused] = await outbox.drain(connector)
    assert refused.delivered == 0 and refused.dead == 1
    record = await outbox.record()
    assert record.failing_since is None and record.consecutive_failures == 0
