"""GET /api/analytics/funnels/{id}: numbers computed by hand for the seeded dataset (tests/dashboard/support.py).

Period 2026-11-01 (one day). Entries in the period: LEADS {6}; NEW_REQUEST {1,2,3,4,8} (5 arrives
"now", 7 ten days earlier, 10 is deleted); QUALIFIED {1,2}; OFFER_SENT {1}; WON {1}; LOST {2,3,6,8}.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.dashboard.support import TOKEN, Running
from tests.support import web

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAY = {"from": "2026-11-01", "to": "2026-11-01"}


def get(run: Running, path: str, **params: str) -> httpx.Response:
    return web.get(f"{run.url}/api/analytics{path}", params=params, headers=AUTH)


def by_stage(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["stage"]: row for row in rows}


def test_conversion_times_losses_and_temperature(dashboard: Running) -> None:
    response = get(dashboard, f"/funnels/{dashboard.data.funnel_id}", **DAY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["period"] == {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}
    assert [s["code"] for s in body["stages"]][:3] == ["LEADS", "NEW_REQUEST", "QUALIFIED"]

    conv = by_stage(body["conversion"])
    assert conv["LEADS"] | {} == {
        "stage": "LEADS", "reached": 1, "next_stage": "NEW_REQUEST", "to_next": 0, "to_next_pct": 0.0,
        "to_won": 0, "to_won_pct": 0.0,
    }  # fmt: skip
    # 1 and 2 got past NEW_REQUEST (2 was lost only after qualifying); only 1 was won.
    assert conv["NEW_REQUEST"] == {
        "stage": "NEW_REQUEST", "reached": 5, "next_stage": "QUALIFIED", "to_next": 2, "to_next_pct": 40.0,
        "to_won": 1, "to_won_pct": 20.0,
    }  # fmt: skip
    # Skipping the DEFERRED side stage still counts as getting past QUALIFIED.
    assert (conv["QUALIFIED"]["reached"], conv["QUALIFIED"]["to_next"], conv["QUALIFIED"]["to_next_pct"]) == (
        2,
        1,
        50.0,
    )
    assert conv["QUALIFIED"]["to_won_pct"] == 50.0
    assert conv["DEFERRED"]["reached"] == 0 and conv["DEFERRED"]["to_next_pct"] is None
    assert (conv["OFFER_SENT"]["to_next_pct"], conv["OFFER_SENT"]["to_won_pct"]) == (100.0, 100.0)
    assert conv["WON"]["reached"] == 1 and conv["WON"]["to_won_pct"] is None
    assert conv["LOST"]["reached"] == 4

    times = by_stage(body["time_in_stage"])
    assert (times["LEADS"]["samples"], times["LEADS"]["median_seconds"]) == (1, 300.0)
    # 600, 900, 1200, 1800 s: the median of an even count is the mean of the middle two.
    assert (times["NEW_REQUEST"]["samples"], times["NEW_REQUEST"]["median_seconds"]) == (4, 1050.0)
    assert (times["QUALIFIED"]["samples"], times["QUALIFIED"]["median_seconds"]) == (2, 4500.0)
    assert times["OFFER_SENT"]["median_seconds"] == 7200.0
    assert times["DEFERRED"] == {"stage": "DEFERRED", "samples": 0, "median_seconds": None}
    assert "WON" not in times and "LOST" not in times

    assert body["lost_deals"] == 4
    reasons = [(r["code"], r["label_en"], r["label_ru"], r["deals"]) for r in body["loss_reasons"]]
    assert reasons == [
        ("spam", "Spam", "Спам", 2),  # a template code and a Bitrix24 list item id
        ("bought_elsewhere", "Bought from a competitor", "Купил у конкурента", 1),  # CRM id 777
        (None, "Not set", "Не указана", 1),
    ]

    temperature = {t["temperature"]: (t["deals"], t["amount"]) for t in body["temperature"]}
    assert temperature == {
        "cold": (4, "750.00"),
        "warm": (3, "1400.00"),
        "hot": (1, "1000.00"),
        "unknown": (1, "0"),
    }


def test_the_period_limits_entries(dashboard: Running) -> None:
    body = get(
        dashboard, f"/funnels/{dashboard.data.funnel_id}", **{"from": "2026-10-20", "to": "2026-10-31"}
    ).json()
    conv = by_stage(body["conversion"])
    # Only deal 7 entered anything then: NEW_REQUEST and QUALIFIED, five minutes apart.
    assert (conv["NEW_REQUEST"]["reached"], conv["NEW_REQUEST"]["to_next"]) == (1, 1)
    assert conv["LOST"]["reached"] == 0
    assert by_stage(body["time_in_stage"])["NEW_REQUEST"]["median_seconds"] == 300.0
    assert body["loss_reasons"] == [] and body["lost_deals"] == 0


def test_errors_are_clear(dashboard: Running) -> None:
    missing = get(dashboard, "/funnels/999")
    assert missing.status_code == 404 and "no funnel with id 999" in missing.json()["detail"]
    bad = get(dashboard, f"/funnels/{dashboard.data.funnel_id}", **{"from": "yesterday"})
    assert bad.status_code == 422 and "from='yesterday' is not a date" in bad.json()["detail"]
    empty = get(
        dashboard, f"/funnels/{dashboard.data.funnel_id}", **{"from": "2026-11-02", "to": "2026-11-01"}
    )
    assert empty.status_code == 422 and "the period is empty" in empty.json()["detail"]
    assert web.get(f"{dashboard.url}/api/analytics/overview").status_code == 401
