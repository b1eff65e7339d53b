"""Every Bitrix24Connector method against the sandbox over real HTTP (inbound-webhook auth)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from connectors.base import (
    CreatedLookup,
    CRMConnector,
    FieldRequirement,
    FieldUpdate,
    NewComment,
    NewField,
    NewStage,
    NewTask,
    NotSupported,
    PermanentError,
    StageChange,
    StageMove,
    TaskDeadline,
)
from connectors.bitrix24.client import Bitrix24Connector
from tests.connectors.bitrix24.conftest import Sandbox

DEFAULT_CODES = [
    "NEW",
    "PREPARATION",
    "PREPAYMENT_INVOICE",
    "EXECUTING",
    "FINAL_INVOICE",
    "WON",
    "LOSE",
    "APOLOGY",
]


def _as_port(connector: Bitrix24Connector) -> CRMConnector:
    return connector  # mypy --strict checks the structural match with the protocol here


async def test_implements_the_port_and_declares_capabilities(connector: Bitrix24Connector) -> None:
    assert isinstance(_as_port(connector), CRMConnector)
    caps = connector.capabilities
    assert (caps.native_loss_reasons, caps.required_fields_by_stage) == (False, False)
    assert caps.webhook_registration_api is False  # webhook auth: no event.bind
    assert caps.fixed_final_stages is True
    assert caps.stage_id_format == "C{pipeline_id}:{code}"


async def test_check_reports_scopes(sandbox: Sandbox, connector: Bitrix24Connector) -> None:
    info = await connector.check()
    assert info.scopes == ("crm", "task", "user")
    assert info.missing_scopes == ()
    assert info.account_id == sandbox.url.split("//")[1]


async def test_new_portal_has_default_category_with_bare_codes(connector: Bitrix24Connector) -> None:
    [main] = await connector.list_pipelines()
    assert (main.id, main.is_main) == ("0", True)
    assert [s.id for s in main.stages] == DEFAULT_CODES
    by_id = {s.id: s for s in main.stages}
    assert by_id["WON"].semantics == "success" and by_id["LOSE"].semantics == "failure"
    assert by_id["APOLOGY"].semantics == "failure" and by_id["NEW"].semantics == "process"
    assert by_id["NEW"].system and not by_id["PREPARATION"].system
    assert (by_id["NEW"].color, by_id["NEW"].sort, by_id["NEW"].name) == ("#39A8EF", 10, "New")


async def test_create_rename_pipeline_gets_prefixed_default_stages(connector: Bitrix24Connector) -> None:
    created = await connector.create_pipeline("Wholesale", 200, [NewStage("QUAL", "Qualify", 10, "#112233")])
    assert created.id != "0" and created.name == "Wholesale" and created.sort == 200
    assert [s.id for s in created.stages] == [f"C{created.id}:{c}" for c in DEFAULT_CODES]
    assert all(s.row_id for s in created.stages)
    await connector.rename_pipeline(created.id, "Retail")
    names = {p.id: p.name for p in await connector.list_pipelines()}
    assert names[created.id] == "Retail"


async def test_stage_add_update_delete(connector: Bitrix24Connector) -> None:
    pipe = await connector.create_pipeline("P", 100, [])
    [added] = await connector.add_stages(pipe.id, [NewStage("DECISION", "Decision", 55, "#FFA900")])
    assert added.id == f"C{pipe.id}:DECISION" and added.row_id
    await connector.update_stages([StageChange(added, name="Decision making", sort=56, color="#00A9F4")])
    stages = {s.id: s for p in await connector.list_pipelines() if p.id == pipe.id for s in p.stages}
    assert (stages[added.id].name, stages[added.id].sort, stages[added.id].color) == (
        "Decision making",
        56,
        "#00A9F4",
    )
    # NEW is a system stage: the connector passes FORCED=Y, so the delete works.
    await connector.delete_stages([stages[added.id], stages[f"C{pipe.id}:NEW"]])
    left = {s.id for p in await connector.list_pipelines() if p.id == pipe.id for s in p.stages}
    assert added.id not in left and f"C{pipe.id}:NEW" not in left


async def test_stage_sort_rule_and_code_validation(connector: Bitrix24Connector) -> None:
    pipe = await connector.create_pipeline("P", 100, [])
    with pytest.raises(PermanentError, match="after the final stage") as info:
        await connector.add_stages(pipe.id, [NewStage("LATE", "Late", 65, "#FFFFFF")])
    assert info.value.item_ref == "LATE"
    with pytest.raises(PermanentError, match="STATUS_ID"):
        await connector.add_stages(pipe.id, [NewStage("A_VERY_LONG_STAGE_CODE_X", "Long", 15, "#FFFFFF")])
    with pytest.raises(PermanentError, match="STATUS_ID"):
        await connector.add_stages(pipe.id, [NewStage("BAD CODE!", "Bad", 15, "#FFFFFF")])
    with pytest.raises(PermanentError, match="already exists"):
        await connector.add_stages(pipe.id, [NewStage("NEW", "Dup", 15, "#FFFFFF")])


async def test_stage_with_deals_is_counted_and_not_deletable(
    sandbox: Sandbox, connector: Bitrix24Connector
) -> None:
    pipe = await connector.create_pipeline("P", 100, [])
    stages = {s.id: s for s in pipe.stages}
    prep = stages[f"C{pipe.id}:PREPARATION"]
    for _ in range(3):
        sandbox.create_deal(TITLE="x", CATEGORY_ID=int(pipe.id), STAGE_ID=prep.id)
    counts = await connector.count_deals_in_stages([prep, stages[f"C{pipe.id}:NEW"]])
    assert counts == {prep.id: 3, f"C{pipe.id}:NEW": 0}
    with pytest.raises(PermanentError, match="active items"):
        await connector.delete_stages([prep])


async def test_fields_list_and_create_enumeration(connector: Bitrix24Connector) -> None:
    assert await connector.list_fields() == []
    created = await connector.create_fields(
        [
            NewField("loss_reason", "Loss reason", "enum", options=("Price", "Competitor")),
            NewField("next_contact", "Next contact", "datetime"),
        ]
    )
    assert [f.crm_name for f in created] == ["UF_CRM_LOSS_REASON", "UF_CRM_NEXT_CONTACT"]
    assert [o.value for o in created[0].options] == ["Price", "Competitor"]
    assert all(o.id for o in created[0].options)
    assert (created[0].code, created[0].type, created[0].name) == (
        "loss_reason",
        "enumeration",
        "Loss reason",
    )
    assert {f.crm_name for f in await connector.list_fields()} == {
        "UF_CRM_LOSS_REASON",
        "UF_CRM_NEXT_CONTACT",
    }


async def test_loss_reasons_and_stage_requirements_not_supported(connector: Bitrix24Connector) -> None:
    with pytest.raises(NotSupported):
        await connector.list_loss_reasons()
    with pytest.raises(NotSupported):
        await connector.create_loss_reasons(["Price"])
    await connector.set_field_requirements([])  # nothing asked, nothing to refuse
    with pytest.raises(NotSupported):
        await connector.set_field_requirements([FieldRequirement("1", "0", ("NEW",))])


async def test_get_deals_and_modified_since(sandbox: Sandbox, connector: Bitrix24Connector) -> None:
    ids = [sandbox.create_deal(TITLE=f"Deal {i}", OPPORTUNITY="150.5") for i in range(60)]
    deals = await connector.get_deals([str(i) for i in ids[:55]])
    assert sorted(int(d.id) for d in deals) == ids[:55]
    first = next(d for d in deals if d.id == str(ids[0]))
    assert (first.pipeline_id, first.stage_id, first.title) == ("0", "NEW", "Deal 0")
    assert str(first.amount) == "150.50" and first.updated_at.tzinfo is not None
    sandbox.reset_stats()
    pages = [
        page async for page in connector.list_deals_modified_since(datetime.now(UTC) - timedelta(hours=1))
    ]
    assert sorted(int(d.id) for page in pages for d in page) == ids
    assert sandbox.stats()["by_method"] == {"batch": 1}  # 50 chained pages (2,500 deals) a request
    assert [
        p async for p in connector.list_deals_modified_since(datetime.now(UTC) + timedelta(hours=1))
    ] == []


async def test_incremental_pull_skips_no_deal_changed_between_pages(
    sandbox: Sandbox, connector: Bitrix24Connector
) -> None:
    """A manager changes a deal of the first page while the pull is under way. Paged by offset in
    DATE_MODIFY order, that deal jumps to the end and every later row moves up one place, so the
    first row of the next page is never served; paged by ID (`>ID`, start=-1) nothing moves."""
    body = sandbox.control("POST", "/_sandbox/deals/bulk", {"count": 120, "title": "seed"})
    ids = list(range(int(body["first_id"]), int(body["last_id"]) + 1))
    sandbox.control("POST", "/_sandbox/clock", {"advance": 120})  # the change is a later second
    change = {"deal_id": ids[0], "fields": {"TITLE": "changed meanwhile"}}
    sandbox.control(
        "POST",
        "/_sandbox/triggers",
        {"method": "crm.deal.list", "after": 1, "action": "update_deal", **change},
    )

    pages = [p async for p in connector.list_deals_modified_since(datetime.now(UTC) - timedelta(hours=1))]

    assert sandbox.control("GET", "/_sandbox/triggers") == []  # the change happened mid-pull
    seen = [int(d.id) for page in pages for d in page]
    assert sorted(seen) == ids  # every deal once, none skipped
    assert all(len(page) <= 50 for page in pages)


async def test_move_deals_within_and_across_pipelines(sandbox: Sandbox, connector: Bitrix24Connector) -> None:
    other = await connector.create_pipeline("Other", 100, [])
    a, b, c = (sandbox.create_deal(TITLE=t) for t in "abc")
    results = await connector.move_deals(
        [
            StageMove("m1", str(a), "0", "EXECUTING"),
            StageMove("m2", str(b), other.id, f"C{other.id}:PREPARATION"),
            StageMove("m3", str(c), "0", f"C{other.id}:WON"),  # a stage of another pipeline
        ]
    )
    assert [r.ok for r in results] == [True, True, False]
    assert results[2].error is not None and results[2].error.item_ref == "m3"
    got = {d.id: (d.pipeline_id, d.stage_id) for d in await connector.get_deals([str(a), str(b), str(c)])}
    assert got == {
        str(a): ("0", "EXECUTING"),
        str(b): (other.id, f"C{other.id}:PREPARATION"),
        str(c): ("0", "NEW"),
    }


async def test_tasks_comments_and_field_updates(sandbox: Sandbox, connector: Bitrix24Connector) -> None:
    [field] = await connector.create_fields([NewField("budget_note", "Budget note", "string")])
    deal = sandbox.create_deal(TITLE="t")
    due = datetime(2030, 1, 2, 15, 0, tzinfo=UTC)
    [task] = await connector.create_tasks([NewTask("t1", str(deal), "Call back", due, description="d")])
    assert task.ok and task.crm_id
    [stored] = sandbox.state()["tasks"]
    assert (
        stored["ufCrmTask"] == [f"D_{deal}"]
        and stored["responsibleId"] == "1"
        and stored["title"] == "Call back"
    )
    later = due + timedelta(days=1)
    assert task.crm_id is not None
    moved, missing = await connector.move_task_deadlines(
        [TaskDeadline("m1", task.crm_id, later), TaskDeadline("m2", "999999", later)]
    )
    assert moved.ok and datetime.fromisoformat(sandbox.state()["tasks"][0]["deadline"]) == later
    assert missing.error is not None and "not found" in missing.error.crm_text
    comments = await connector.add_comments(
        [NewComment("c1", str(deal), "Pushed [fs:7]"), NewComment("c2", "999999", "x")]
    )
    assert comments[0].ok and comments[0].crm_id
    # Crash recovery: what we created is found by the marker in its text, what we did not is absent.
    lookups = [CreatedLookup("a", str(deal), "[fs:7]"), CreatedLookup("b", str(deal), "[fs:8]")]
    assert await connector.find_created("comment", lookups) == {"a": comments[0].crm_id}
    assert await connector.find_created("task", [CreatedLookup("t", str(deal), "d")]) == {"t": task.crm_id}
    assert comments[1].error is not None and comments[1].error.crm_code == "OWNER_NOT_FOUND"
    assert comments[1].error.item_ref == "c2"
    update, native_reason = await connector.update_deal_fields(
        [
            FieldUpdate("u1", str(deal), {field.crm_name: "big"}, amount=Decimal("1234.5")),
            FieldUpdate("u2", str(deal), {}, loss_reason_id="7"),  # Bitrix24 has no such list
        ]
    )
    assert update.ok
    assert isinstance(native_reason.error, NotSupported) and native_reason.error.item_ref == "u2"
    [snapshot] = await connector.get_deals([str(deal)])
    assert snapshot.fields[field.crm_name] == "big" and snapshot.amount == Decimal("1234.5")


async def test_webhook_registration_needs_oauth(connector: Bitrix24Connector) -> None:
    for call in (
        connector.register_webhook("https://x.example/hook", ["ONCRMDEALUPDATE"]),
        connector.list_webhooks(),
        connector.unregister_webhook("https://x.example/hook"),
    ):
        with pytest.raises(NotSupported, match="outgoing webhook in the Bitrix24 portal UI"):
            await call
