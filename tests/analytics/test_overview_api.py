"""GET /api/analytics/overview, /failures and /funnels/{id}/board over real HTTP."""

from __future__ import annotations

from tests.dashboard.support import CRM_ERROR_DEAD, CRM_ERROR_FAILED, FAILED_EVENT_ERROR, TOKEN, Running
from tests.support import web

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_overview_has_every_connection_with_queues(dashboard: Running) -> None:
    body = web.get(f"{dashboard.url}/api/analytics/overview", headers=AUTH).json()
    by_name = {c["health"]["name"]: c for c in body["connections"]}
    assert sorted(by_name) == ["amo", "b24"]
    b24 = by_name["b24"]
    assert b24["health"]["events"] == {"processed": 2, "pending": 1, "failed": 1}
    assert b24["outbox"] == {"pending": 1, "failed": 1, "dead": 2, "done": 3}
    assert b24["dead_letters"] == 2
    assert b24["health"]["deals"] == 9  # ten mirrored, one deleted
    assert b24["health"]["inbox_lag_seconds"] > 0  # a pending event from 2026-11-01
    assert [(u["crm_stage_id"], u["deals"]) for u in b24["health"]["unknown_stages"]] == [("C5:UC_HAND", 1)]
    assert [(f["name"], f["deals"]) for f in b24["funnels"]] == [("Sales", 9)]
    amo = by_name["amo"]
    assert amo["health"]["status"] == "paused" and "refresh token" in amo["health"]["paused_reason"]
    assert amo["outbox"] == {"pending": 0, "failed": 0, "dead": 0, "done": 0}
    assert amo["health"]["last_webhook_at"] is None
    assert [(f["name"], f["deals"]) for f in amo["funnels"]] == [("Empty", 0)]


def test_failures_list_the_crm_error_text(dashboard: Running) -> None:
    body = web.get(f"{dashboard.url}/api/analytics/failures", headers=AUTH).json()
    assert [(e["connection"], e["error"]) for e in body["events"]] == [("b24", FAILED_EVENT_ERROR)]
    assert body["events"][0]["body_preview"].startswith("event=ONCRMDEALUPDATE")
    commands = [(c["status"], c["kind"], c["last_error"]) for c in body["commands"]]
    assert commands == [
        ("dead", "fields", CRM_ERROR_DEAD),
        ("dead", "move", CRM_ERROR_DEAD),
        ("failed", "task", CRM_ERROR_FAILED),
    ]


def test_board_counts_sums_and_overdue(dashboard: Running) -> None:
    body = web.get(
        f"{dashboard.url}/api/analytics/funnels/{dashboard.data.funnel_id}/board", headers=AUTH
    ).json()
    columns = {c["stage"]["code"]: c for c in body["columns"]}
    assert list(columns)[:1] == ["LEADS"] and list(columns)[-2:] == ["WON", "LOST"]
    summary = {code: (c["deals"], c["amount"], c["overdue"]) for code, c in columns.items() if c["deals"]}
    assert summary == {
        "NEW_REQUEST": (2, "700.00", 1),
        "QUALIFIED": (1, "700.00", 0),
        "WON": (1, "1000.00", 0),
        "LOST": (4, "750.00", 0),
    }
    new = columns["NEW_REQUEST"]
    ids = dashboard.data.deals
    # Overdue first, then newest arrival; only the deal waiting since 2026-11-01 is past the 2-minute SLA.
    assert [(d["id"], d["overdue"]) for d in new["items"]] == [(ids["4"], True), (ids["5"], False)]
    assert new["stage"]["sla_seconds"] == 120 and new["stage"]["name_en"] == "New request"
    assert body["unknown_stage_deals"] == 1
