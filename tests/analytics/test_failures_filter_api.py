"""GET /api/analytics/failures with the dashboard's filter as query parameters, over real HTTP."""

from __future__ import annotations

from typing import Any, get_args

import httpx

from app.analytics.schemas import RetryableStatus
from app.outbox.statuses import KINDS, RETRYABLE_STATUSES, CommandKind
from tests.dashboard.support import CRM_ERROR_DEAD, CRM_ERROR_FAILED, TOKEN, Running
from tests.support import web

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def failures(dashboard: Running, **params: str) -> httpx.Response:
    return web.get(f"{dashboard.url}/api/analytics/failures", params=params, headers=AUTH)


def summary(body: dict[str, Any]) -> tuple[int, list[tuple[str, str, str]]]:
    commands = [(c["status"], c["kind"], c["last_error"]) for c in body["commands"]]
    return len(body["events"]), commands


def test_the_filter_narrows_the_lists(dashboard: Running) -> None:
    assert summary(failures(dashboard, connection="b24", kind="move").json()) == (
        1,
        [("dead", "move", CRM_ERROR_DEAD)],
    )
    assert summary(failures(dashboard, status="failed").json()) == (1, [("failed", "task", CRM_ERROR_FAILED)])
    assert summary(failures(dashboard, status="dead").json()) == (
        1,
        [("dead", "fields", CRM_ERROR_DEAD), ("dead", "move", CRM_ERROR_DEAD)],
    )
    # The amo connection exists but has no failures: both lists are empty.
    assert summary(failures(dashboard, connection="amo").json()) == (0, [])


def test_bad_filters_are_refused(dashboard: Running) -> None:
    unknown = failures(dashboard, connection="nope")
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    assert failures(dashboard, kind="teleport").status_code == 422
    assert failures(dashboard, status="done").status_code == 422  # done commands are not failures


def test_the_api_accepts_exactly_the_outbox_kinds_and_retryable_statuses() -> None:
    assert get_args(CommandKind) == KINDS
    assert get_args(RetryableStatus) == RETRYABLE_STATUSES
