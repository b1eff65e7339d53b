"""Sandbox fidelity: URL shapes, batch references, validation, persistence, and an independent client
(fast_bitrix24, which posts JSON to `{webhook}{method}` and batches `method?query` commands)."""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fast_bitrix24 import Bitrix

from connectors.bitrix24.sandbox import SandboxConfig, create_sandbox_app
from tests.connectors.bitrix24.conftest import Sandbox, running_sandbox
from tests.support import web
from tests.support.server import serve_asgi


def test_fast_bitrix24_lists_adds_and_batches(sandbox: Sandbox) -> None:
    sandbox.control("POST", "/_sandbox/deals/bulk", {"count": 120, "title": "seed"})
    bx = Bitrix(sandbox.webhook_url, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "results != total" would be a pagination bug
        deals = bx.get_all("crm.deal.list")
        titles = bx.get_all("crm.deal.list", {"select": ["ID", "TITLE"], "filter": {">ID": 100}})
    assert sorted(int(d["ID"]) for d in deals) == list(range(1, 121))
    assert sorted(int(d["ID"]) for d in titles) == list(range(101, 121)) and set(titles[0]) == {"ID", "TITLE"}
    new_id = bx.call("crm.deal.add", {"fields": {"TITLE": "via fast_bitrix24"}})
    assert int(new_id) == 121
    added = bx.call("crm.deal.add", [{"fields": {"TITLE": f"batch {i}"}} for i in range(3)])
    assert sorted(int(x) for x in added) == [122, 123, 124]
    got = bx.get_by_ID("crm.deal.get", [121, 122])
    assert {str(k): v["TITLE"] for k, v in got.items()} == {"121": "via fast_bitrix24", "122": "batch 0"}
    stats = sandbox.stats()
    assert stats["errors"] == {} and stats["by_method"]["batch"] >= 2


def test_json_suffix_get_and_form_bodies_work(sandbox: Sandbox) -> None:
    base = sandbox.webhook_url
    as_json = web.post(f"{base}crm.status.list.json", json={"filter": {"ENTITY_ID": "DEAL_STAGE"}}).json()
    as_get = web.get(f"{base}crm.status.list", params={"filter[ENTITY_ID]": "DEAL_STAGE"}).json()
    as_form = web.post(f"{base}crm.status.list", data={"filter[ENTITY_ID]": "DEAL_STAGE"}).json()
    assert as_json["total"] == as_get["total"] == as_form["total"] == 8
    assert as_json["result"][0] == {
        "ID": as_json["result"][0]["ID"],
        "ENTITY_ID": "DEAL_STAGE",
        "STATUS_ID": "NEW",
        "NAME": "New",
        "NAME_INIT": "New",
        "SORT": "10",
        "SYSTEM": "Y",
        "CATEGORY_ID": None,
        "COLOR": "#39A8EF",
        "SEMANTICS": None,
        "EXTRA": {"SEMANTICS": "process", "COLOR": "#39A8EF"},
    }
    time_block = as_json["time"]
    assert {"operating", "operating_reset_at", "start", "finish", "duration"} <= set(time_block)


def test_batch_reference_inside_a_value_like_the_docs_example(sandbox: Sandbox) -> None:
    base = sandbox.webhook_url
    category = web.post(f"{base}crm.category.add", json={"entityTypeId": 2, "fields": {"name": "C"}}).json()
    category_id = category["result"]["category"]["id"]
    deal = sandbox.create_deal(TITLE="in category", CATEGORY_ID=category_id)
    body = web.post(
        f"{base}batch",
        json={
            "halt": 0,
            "cmd": {
                "get_deal": f"crm.deal.get?id={deal}",
                # DOCS batch.md example: the reference embedded in a value, sent raw ...
                "stages": "crm.status.list?filter[ENTITY_ID]=DEAL_STAGE_$result[get_deal][CATEGORY_ID]",
                # ... and percent-encoded, as PHP http_build_query / fast_bitrix24 send it.
                "again": "crm.deal.get?id=%24result%5Bget_deal%5D%5BID%5D",
            },
        },
    ).json()["result"]
    assert len(body["result"]["stages"]) == 8
    assert body["result"]["stages"][0]["STATUS_ID"] == f"C{category_id}:NEW"
    assert body["result"]["again"]["TITLE"] == "in category"


def test_batch_substitutes_result_references(sandbox: Sandbox) -> None:
    deal = sandbox.create_deal(TITLE="ref")
    body = web.post(
        f"{sandbox.webhook_url}batch",
        json={
            "halt": 0,
            "cmd": {
                "get": f"crm.deal.get?id={deal}",
                "stages": "crm.status.list?filter[ENTITY_ID]=DEAL_STAGE&filter[STATUS_ID]=$result[get][STAGE_ID]",
                "first": "crm.deal.list?order[ID]=ASC&start=-1&select[0]=ID",
                "after": "crm.deal.list?order[ID]=ASC&start=-1&filter[>ID]=$result[first][0][ID]",
                "bad": "crm.deal.get?id=99999",
            },
        },
    ).json()["result"]
    assert [s["STATUS_ID"] for s in body["result"]["stages"]] == ["NEW"]
    assert body["result"]["after"] == [] and body["result_total"]["first"] == 0
    assert body["result_error"]["bad"]["error_description"] == "Not found"
    assert "get" in body["result_time"] and "operating" in body["result_time"]["get"]


def test_item_update_validates_stage_in_pipeline_and_deal_update_ignores_it(sandbox: Sandbox) -> None:
    deal = sandbox.create_deal(TITLE="x")
    base = sandbox.webhook_url
    bad = web.post(
        f"{base}crm.item.update", json={"entityTypeId": 2, "id": deal, "fields": {"stageId": "C9:NEW"}}
    )
    assert bad.status_code == 400 and "Stage" in bad.json()["error_description"]
    legacy = web.post(
        f"{base}crm.deal.update", json={"id": deal, "fields": {"STAGE_ID": "C9:NEW", "CATEGORY_ID": 5}}
    )
    assert legacy.json()["result"] is True
    assert web.post(f"{base}crm.deal.get", json={"id": deal}).json()["result"]["STAGE_ID"] == "NEW"


def test_an_enumeration_field_stores_a_list_item_id_and_nothing_else(sandbox: Sandbox) -> None:
    """A portal keeps an enumeration's value as the list item's ID; a text (even an item's own
    VALUE) is not one, and the field is left empty."""
    base = sandbox.webhook_url
    spec = {
        "FIELD_NAME": "REASON",
        "USER_TYPE_ID": "enumeration",
        "LIST": [{"VALUE": "Дорого"}, {"VALUE": "Спам"}],
    }
    field_id = web.post(f"{base}crm.deal.userfield.add", json={"fields": spec}).json()["result"]
    field = web.post(f"{base}crm.deal.userfield.get", json={"id": field_id}).json()["result"]
    dear, spam = (item["ID"] for item in field["LIST"])
    deal = sandbox.create_deal(TITLE="x")
    stored = lambda: web.post(f"{base}crm.deal.get", json={"id": deal}).json()["result"]["UF_CRM_REASON"]  # noqa: E731
    assert web.post(f"{base}crm.deal.update", json={"id": deal, "fields": {"UF_CRM_REASON": spam}}).json()[
        "result"
    ]
    assert stored() == spam
    web.post(f"{base}crm.deal.update", json={"id": deal, "fields": {"UF_CRM_REASON": "Дорого"}})
    assert stored() == ""
    added = web.post(
        f"{base}crm.item.add",
        json={"entityTypeId": 2, "useOriginalUfNames": "Y", "fields": {"title": "y", "UF_CRM_REASON": dear}},
    ).json()["result"]["item"]
    assert added["UF_CRM_REASON"] == dear


def test_event_bind_is_refused_for_webhook_auth(sandbox: Sandbox) -> None:
    response = web.post(
        f"{sandbox.webhook_url}event.bind", json={"event": "ONCRMDEALADD", "handler": "https://x/"}
    )
    assert response.status_code == 401 and response.json()["error"] == "WRONG_AUTH_TYPE"


def test_enterprise_plan_has_a_bigger_bucket() -> None:
    config = SandboxConfig(plan="enterprise", speed=2.0)
    assert (config.burst, config.drain_per_second) == (250, 10.0)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state_file = str(tmp_path / "b24.json")
    with running_sandbox(state_file=state_file) as box:
        deal = box.create_deal(TITLE="persisted")
        box.control("POST", "/_sandbox/save")
    app = create_sandbox_app(SandboxConfig(state_file=state_file))
    with serve_asgi(app) as url:
        got = web.post(f"{url}/rest/1/sandboxwebhookcode1/crm.deal.get", json={"id": deal}).json()
    assert got["result"]["TITLE"] == "persisted"


def test_unknown_fault_kind_is_rejected(sandbox: Sandbox) -> None:
    response = web.post(f"{sandbox.url}/_sandbox/faults", json={"kind": "nope"})
    assert response.status_code == 400 and "rate_limit" in response.json()["kinds"]


def test_a_stats_wait_answers_once_the_counters_reach_what_it_names(sandbox: Sandbox) -> None:
    wait = f"{sandbox.url}/_sandbox/stats/wait"
    never = web.post(wait, json={"commands": {"crm.deal.add": 1}, "timeout": 0.05})
    assert never.status_code == 408 and never.json()["commands"] == {}
    web.post(f"{sandbox.webhook_url}crm.deal.add", json={"fields": {"TITLE": "x"}}).raise_for_status()
    stats = sandbox.wait_for_stats(commands={"crm.deal.add": 1}, by_method={"crm.deal.add": 1})
    assert stats["commands"]["crm.deal.add"] == 1


def test_a_stats_wait_covers_plain_counters_and_refuses_names_it_cannot_wait_on() -> None:
    """A name the wait ignored used to answer at once, so a test that waited on webhooks_sent did
    not wait at all (and read the plan before the webhook had arrived)."""
    received: list[bytes] = []

    async def hook(scope: dict[str, object], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        received.append((await receive())["body"])  # type: ignore[index]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    with serve_asgi(hook) as hook_url, running_sandbox(webhook_url=f"{hook_url}/hook") as box:
        wait = f"{box.url}/_sandbox/stats/wait"
        unknown = web.post(wait, json={"webhook_sent": 1, "timeout": 5})
        assert unknown.status_code == 400 and "webhooks_sent" in unknown.json()["waitable"]
        assert web.post(wait, json={"webhooks_sent": 1, "timeout": 0.05}).status_code == 408
        box.create_deal(TITLE="x")
        stats = box.wait_for_stats(webhooks_sent=1)
        assert stats["webhooks_sent"] >= 1 and received


def test_simulated_ui_changes_are_made_by_another_user(sandbox: Sandbox) -> None:
    deal = sandbox.create_deal(TITLE="ui")
    sandbox.control("POST", f"/_sandbox/deals/{deal}", {"fields": {"STAGE_ID": "EXECUTING"}})
    got = web.post(f"{sandbox.webhook_url}crm.deal.get", json={"id": deal}).json()["result"]
    assert got["STAGE_ID"] == "EXECUTING" and got["STAGE_SEMANTIC_ID"] == "P"
    assert got["MODIFY_BY_ID"] == str(sandbox.config.ui_user) != str(sandbox.config.webhook_user)
    web.post(f"{sandbox.webhook_url}crm.deal.update", json={"id": deal, "fields": {"STAGE_ID": "WON"}})
    got = web.post(f"{sandbox.webhook_url}crm.deal.get", json={"id": deal}).json()["result"]
    assert (got["MODIFY_BY_ID"], got["CLOSED"], got["STAGE_SEMANTIC_ID"]) == ("1", "Y", "S")


def test_per_deal_rights_refuse_changes_like_the_portal(sandbox: Sandbox) -> None:
    """DOCS error tables: crm.item.update and crm.timeline.comment.add answer ACCESS_DENIED, legacy
    crm.deal.update an empty code with "Access denied"; in a batch only those commands fail."""
    locked, free = sandbox.create_deal(TITLE="locked"), sandbox.create_deal(TITLE="free")
    sandbox.control("POST", "/_sandbox/permissions", {"deny_edit": [locked]})
    base = sandbox.webhook_url
    move = {"entityTypeId": 2, "fields": {"stageId": "EXECUTING"}}
    alone = web.post(f"{base}crm.item.update", json={**move, "id": locked})
    assert (alone.status_code, alone.json()) == (
        400,
        {"error": "ACCESS_DENIED", "error_description": "Access denied"},
    )
    cmd = {
        "locked_move": f"crm.item.update?entityTypeId=2&id={locked}&fields[stageId]=EXECUTING",
        "free_move": f"crm.item.update?entityTypeId=2&id={free}&fields[stageId]=EXECUTING",
        "locked_comment": f"crm.timeline.comment.add?fields[ENTITY_ID]={locked}&fields[ENTITY_TYPE]=deal"
        "&fields[COMMENT]=hi",
        "locked_fields": f"crm.deal.update?id={locked}&fields[TITLE]=changed",
    }
    response = web.post(f"{base}batch", json={"halt": 0, "cmd": cmd})
    assert response.status_code == 200
    body = response.json()["result"]
    denied = {"error": "ACCESS_DENIED", "error_description": "Access denied"}
    assert body["result_error"] == {
        "locked_move": denied,
        "locked_comment": denied,
        "locked_fields": {"error": "", "error_description": "Access denied"},
    }
    assert body["result"]["free_move"]["item"]["stageId"] == "EXECUTING"
    state = {d["ID"]: d for d in sandbox.state()["deals"]}
    assert (state[locked]["STAGE_ID"], state[locked]["TITLE"]) == ("NEW", "locked")
    assert sandbox.state()["comments"] == []
    # Another user (the UI's manager) is not restricted by the webhook user's rights.
    sandbox.control("POST", f"/_sandbox/deals/{locked}", {"fields": {"TITLE": "by hand"}})
    assert {d["ID"]: d for d in sandbox.state()["deals"]}[locked]["TITLE"] == "by hand"


def test_binding_a_bound_handler_again_is_error_core(sandbox: Sandbox) -> None:
    """DOCS (ru) api-reference/events/event-bind.md: 400 ERROR_CORE "Unable to set event handler:
    Handler already binded"."""
    rest = f"{sandbox.url}/rest/"
    bind = {
        "event": "ONCRMDEALUPDATE",
        "handler": "https://svc.example/b24",
        "auth": sandbox.config.access_token,
    }
    assert web.post(f"{rest}event.bind", json=bind).json()["result"] is True
    again = web.post(f"{rest}event.bind", json=bind)
    assert (again.status_code, again.json()) == (
        400,
        {"error": "ERROR_CORE", "error_description": "Unable to set event handler: Handler already binded"},
    )


def test_triggers_change_the_portal_between_calls(sandbox: Sandbox) -> None:
    deal = sandbox.create_deal(TITLE="before")
    sandbox.control("POST", "/_sandbox/clock", {"advance": 120})
    sandbox.control(
        "POST",
        "/_sandbox/triggers",
        {
            "method": "crm.deal.get",
            "after": 2,
            "action": "update_deal",
            "deal_id": deal,
            "fields": {"TITLE": "after"},
        },
    )
    get = {"id": deal}
    first = web.post(f"{sandbox.webhook_url}crm.deal.get", json=get).json()["result"]
    assert first["TITLE"] == "before" and sandbox.control("GET", "/_sandbox/triggers") != []
    second = web.post(f"{sandbox.webhook_url}crm.deal.get", json=get).json()["result"]
    assert second["TITLE"] == "before"  # the change happens after the call it follows
    third = web.post(f"{sandbox.webhook_url}crm.deal.get", json=get).json()["result"]
    assert third["TITLE"] == "after" and third["MODIFY_BY_ID"] == str(sandbox.config.ui_user)
    moved = datetime.fromisoformat(third["DATE_MODIFY"]) - datetime.fromisoformat(first["DATE_MODIFY"])
    assert moved >= timedelta(seconds=119)  # the portal clock ran ahead
    assert sandbox.control("GET", "/_sandbox/triggers") == []
    bad = web.post(f"{sandbox.url}/_sandbox/triggers", json={"method": "crm.deal.get", "action": "nope"})
    assert bad.status_code == 400


def test_a_revoked_webhook_answers_no_auth_found(sandbox: Sandbox) -> None:
    old = sandbox.webhook_url
    sandbox.control("POST", "/_sandbox/webhook/revoke")
    response = web.post(f"{old}scope")
    assert (response.status_code, response.json()["error"]) == (401, "NO_AUTH_FOUND")
