"""Fidelity of the sandbox itself: shapes, content types, validation and persistence."""

from __future__ import annotations

from pathlib import Path

from tests.connectors.amocrm.conftest import Sandbox, running_sandbox


def test_content_types_and_empty_lists(sandbox: Sandbox) -> None:
    ok = sandbox.api("GET", "/api/v4/leads/pipelines")
    assert ok.headers["content-type"] == "application/hal+json"
    empty = sandbox.api("GET", "/api/v4/leads")
    assert empty.status_code == 204 and empty.content == b""
    refused = sandbox.api("GET", "/api/v4/leads/pipelines/1")
    assert refused.status_code == 404 and refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["detail"] == "Pipeline not found"
    sandbox.fault("rate_limit")
    limited = sandbox.api("GET", "/api/v4/account")
    assert limited.status_code == 429 and limited.headers["content-type"].startswith("text/html")
    assert "<title>429 Too Many Requests</title>" in limited.text and "retry-after" not in limited.headers


def test_system_stages_rules(sandbox: Sandbox) -> None:
    pipeline = sandbox.main_pipeline()
    unsorted = next(s for s in pipeline["_embedded"]["statuses"] if s["type"] == 1)
    assert (unsorted["color"], unsorted["is_editable"], unsorted["sort"]) == ("#c1c1c1", False, 10)
    won = next(s for s in pipeline["_embedded"]["statuses"] if s["id"] == 142)
    assert (won["sort"], won["color"]) == (10000, "#CCFF66")
    base = f"/api/v4/leads/pipelines/{pipeline['id']}/statuses"
    recolour = sandbox.api("PATCH", f"{base}/142", json={"color": "#fffeb2"})
    assert (
        recolour.status_code == 400
        and recolour.json()["validation-errors"][0]["errors"][0]["path"] == "color"
    )
    assert sandbox.api("PATCH", f"{base}/142", json={"name": "Выиграна"}).status_code == 200
    assert sandbox.api("DELETE", f"{base}/143").status_code == 400
    into_unsorted = sandbox.api("POST", "/api/v4/leads", json=[{"name": "x", "status_id": unsorted["id"]}])
    assert into_unsorted.status_code == 400
    assert into_unsorted.json()["validation-errors"] == [
        {
            "request_id": "0",
            "errors": [
                {
                    "code": "NotSupportedChoice",
                    "path": "status_id",
                    "detail": "The value you selected is not a valid choice.",
                }
            ],
        }
    ]
    no_stages = sandbox.api("POST", "/api/v4/leads/pipelines", json=[{"name": "Empty"}])
    assert no_stages.status_code == 400


def test_deleting_a_stage_moves_its_leads_to_the_first_stage(sandbox: Sandbox) -> None:
    pipeline = sandbox.main_pipeline()
    regular = [s for s in pipeline["_embedded"]["statuses"] if s["type"] == 0 and s["id"] not in (142, 143)]
    lead = sandbox.create_lead(name="L", status_id=regular[-1]["id"])
    path = f"/api/v4/leads/pipelines/{pipeline['id']}/statuses/{regular[-1]['id']}"
    assert sandbox.api("DELETE", path).status_code == 204
    assert sandbox.lead(lead["id"])["status_id"] == regular[0]["id"]


def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "amocrm.json"
    with running_sandbox(state_file=path) as box:
        box.create_lead(name="Сохранена")
        hook = {"destination": "https://example.com/h", "settings": ["add_lead"]}
        assert box.api("POST", "/api/v4/webhooks", json=hook).status_code == 201
    with running_sandbox(state_file=path) as again:
        leads = again.api("GET", "/api/v4/leads").json()["_embedded"]["leads"]
        assert [lead["name"] for lead in leads] == ["Сохранена"]
        hooks = again.api("GET", "/api/v4/webhooks").json()["_embedded"]["webhooks"]
        assert [h["destination"] for h in hooks] == ["https://example.com/h"]
