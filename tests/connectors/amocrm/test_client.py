"""Every AmoCRMConnector method against the sandbox over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from connectors.amocrm import AmoCRMConnector
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
from tests.connectors.amocrm.conftest import Sandbox

STAGES = [
    NewStage("NEW", "Новая заявка", 10, "#fffeb2"),
    NewStage("TALK", "Переговоры", 20, "#d6eaff"),
    NewStage("WON", "Оплачено", 900, "#87f2c0", "success"),
    NewStage("LOST", "Отказ", 910, "#ff8f92", "failure"),
]


async def test_implements_the_port(connector: AmoCRMConnector) -> None:
    assert isinstance(connector, CRMConnector)
    caps = connector.capabilities
    assert caps.native_loss_reasons and caps.required_fields_by_stage
    assert caps.webhook_registration_api and caps.fixed_final_stages
    assert (caps.max_pipelines, caps.max_stages_per_pipeline) == (50, 100)


async def test_check_reads_the_account(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    info = await connector.check()
    assert info.account_id == str(sandbox.config.account_id)
    assert info.name == sandbox.config.account_name
    assert sandbox.stats()["requests"] == {"GET /api/v4/account": 1}


async def test_new_account_has_one_main_pipeline_with_system_stages(connector: AmoCRMConnector) -> None:
    [pipeline] = await connector.list_pipelines()
    assert pipeline.is_main
    by_id = {s.id: s for s in pipeline.stages}
    assert by_id["142"].name == "Успешно реализовано" and by_id["142"].semantics == "success"
    assert by_id["143"].name == "Закрыто и не реализовано" and by_id["143"].semantics == "failure"
    unsorted = [s for s in pipeline.stages if not s.editable]
    assert len(unsorted) == 1 and unsorted[0].name == "Неразобранное" and unsorted[0].system
    assert pipeline.stages[0] == unsorted[0]  # sorted by sort: unsorted first, won/lost last
    assert [s.id for s in pipeline.stages[-2:]] == ["142", "143"]


async def test_create_pipeline_renames_fixed_stages(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    pipeline = await connector.create_pipeline("Продажи", 20, STAGES)
    names = [(s.name, s.semantics) for s in pipeline.stages]
    assert ("Новая заявка", "process") in names and ("Переговоры", "process") in names
    won = next(s for s in pipeline.stages if s.id == "142")
    lost = next(s for s in pipeline.stages if s.id == "143")
    assert (won.name, lost.name) == ("Оплачено", "Отказ")
    assert len(pipeline.stages) == 5  # + the unsorted stage every pipeline has
    sent = sandbox.requests()[-1]
    assert sent["route"] == "POST /api/v4/leads/pipelines" and sent["batch"] == 1
    listed = {p.id: p for p in await connector.list_pipelines()}
    assert listed[pipeline.id].stages == pipeline.stages

    await connector.rename_pipeline(pipeline.id, "Продажи B2B")
    assert {p.id: p.name for p in await connector.list_pipelines()}[pipeline.id] == "Продажи B2B"


async def test_stage_lifecycle(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    pipeline = await connector.create_pipeline("P", 20, STAGES[:1])
    added = await connector.add_stages(
        pipeline.id, [NewStage("A", "Этап A", 30, "#ffdc7f"), NewStage("B", "Этап B", 40, "#ccc8f9")]
    )
    assert [s.name for s in added] == ["Этап A", "Этап B"]
    assert all(s.pipeline_id == pipeline.id for s in added)
    won = next(s for s in pipeline.stages if s.id == "142")
    await connector.update_stages(
        [
            StageChange(added[0], name="Этап A2", color="#98cbff", sort=35),
            StageChange(won, name="Победа", color="#87f2c0", sort=1),  # colour/sort of 142 are fixed
        ]
    )
    stages = {
        s.id: s for s in next(p for p in await connector.list_pipelines() if p.id == pipeline.id).stages
    }
    assert (stages[added[0].id].name, stages[added[0].id].color, stages[added[0].id].sort) == (
        "Этап A2",
        "#98cbff",
        35,
    )
    assert stages["142"].name == "Победа" and stages["142"].sort == 10000
    await connector.delete_stages([added[1]])
    await connector.delete_stages([added[1]])  # already gone: nothing to do, no error
    left = {s.id for s in next(p for p in await connector.list_pipelines() if p.id == pipeline.id).stages}
    assert added[1].id not in left and added[0].id in left
    with pytest.raises(NotSupported):
        await connector.add_stages(pipeline.id, [NewStage("W2", "Ещё победа", 50, "#fffeb2", "success")])


async def test_stage_validation_surfaces_crm_text(connector: AmoCRMConnector) -> None:
    with pytest.raises(PermanentError) as error:
        await connector.create_pipeline("Bad", 20, [NewStage("X", "X", 10, "#123456")])
    assert "_embedded.statuses.0.color" in error.value.crm_text
    assert "not a valid choice" in error.value.crm_text
    [pipeline] = await connector.list_pipelines()
    with pytest.raises(PermanentError) as error:
        await connector.add_stages(pipeline.id, [NewStage("X", "X", 10, "#000000")])
    assert error.value.crm_code == "NotSupportedChoice"


async def test_limits_of_pipelines_and_stages(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    [main] = await connector.list_pipelines()
    many = [NewStage(f"S{i}", f"Этап {i}", 100 + i, "#fffeb2") for i in range(93)]
    await connector.add_stages(main.id, many[:50])
    await connector.add_stages(main.id, many[50:])  # 7 + 93 = 100 statuses: the maximum
    with pytest.raises(PermanentError) as error:
        await connector.add_stages(main.id, [NewStage("ONE", "Лишний", 999, "#fffeb2")])
    assert "at most 100" in error.value.crm_text
    for i in range(49):  # through the connector: its limiter keeps to the account's rate (no 429)
        await connector.create_pipeline(f"P{i}", 10 + i, STAGES[:1])
    with pytest.raises(PermanentError) as error:
        await connector.create_pipeline("51st", 5, STAGES[:1])
    assert "at most 50" in error.value.crm_text


async def test_fields_paginate_create_and_requirements(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    before = await connector.list_fields()
    assert any(f.type == "tracking_data" for f in before)  # a new account's predefined utm fields
    new = [NewField(f"f_{i}", f"Поле {i}", "string") for i in range(45)]
    new.append(NewField("payment", "Оплата", "enum", ("Наличные", "Карта")))
    created = await connector.create_fields(new)
    assert [f.code for f in created] == [n.code for n in new]
    assert [o.value for o in created[-1].options] == ["Наличные", "Карта"] and created[-1].type == "enum"
    sandbox.reset_stats()
    listed = await connector.list_fields()
    assert len(listed) == len(before) + 46
    assert sandbox.stats()["requests"]["GET /api/v4/leads/custom_fields"] == 2  # 50 per page

    pipeline = await connector.create_pipeline("Req", 20, STAGES)
    talk = next(s for s in pipeline.stages if s.name == "Переговоры")
    [main] = [p for p in await connector.list_pipelines() if p.is_main]
    main_stage = next(s for s in main.stages if s.editable and s.semantics == "process")
    field = created[0]
    await connector.set_field_requirements([FieldRequirement(field.id, main.id, (main_stage.id,))])
    await connector.set_field_requirements([FieldRequirement(field.id, pipeline.id, (talk.id, "142"))])
    stored = sandbox.api("GET", f"/api/v4/leads/custom_fields/{field.id}").json()["required_statuses"]
    assert sorted((r["pipeline_id"], r["status_id"]) for r in stored) == sorted(
        [(int(main.id), int(main_stage.id)), (int(pipeline.id), int(talk.id)), (int(pipeline.id), 142)]
    )  # the other pipeline's requirement is kept
    sandbox.reset_stats()
    await connector.set_field_requirements([FieldRequirement(field.id, pipeline.id, ("142", talk.id))])
    assert sandbox.stats()["writes"] == 0  # already so: no PATCH
    relisted = {f.id: f for f in await connector.list_fields()}
    assert set(relisted[field.id].required_stages) == {
        (main.id, main_stage.id),
        (pipeline.id, talk.id),
        (pipeline.id, "142"),
    }


async def test_loss_reasons(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    assert await connector.list_loss_reasons() == []  # 204 on a new account
    created = await connector.create_loss_reasons(["Дорого", "Ушёл к конкуренту"])
    assert [r.name for r in created] == ["Дорого", "Ушёл к конкуренту"]
    assert {r.id for r in await connector.list_loss_reasons()} == {r.id for r in created}


async def test_a_lost_lead_takes_a_native_loss_reason(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    main = sandbox.main_pipeline()
    lost = sandbox.create_lead(name="Потерянная", pipeline_id=main["id"], status_id=143)
    [reason] = await connector.create_loss_reasons(["Дорого"])
    [updated] = await connector.update_deal_fields(
        [FieldUpdate("u", str(lost["id"]), {}, loss_reason_id=reason.id)]
    )
    assert updated.ok
    [deal] = await connector.get_deals([str(lost["id"])])
    assert deal.loss_reason_id == reason.id


async def test_deals_read_and_write(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    main = sandbox.main_pipeline()
    statuses = [s for s in main["_embedded"]["statuses"] if s["type"] == 0 and s["id"] not in (142, 143)]
    field = (await connector.create_fields([NewField("inn", "ИНН", "string")]))[0]
    lead = sandbox.create_lead(name="Сделка", price=1500)
    other = sandbox.create_lead(name="Другая")
    [deal] = await connector.get_deals([str(lead["id"]), "999999999"])
    assert (deal.title, deal.amount, deal.pipeline_id) == ("Сделка", Decimal(1500), str(main["id"]))

    moved = await connector.move_deals(
        [
            StageMove("m1", str(lead["id"]), str(main["id"]), str(statuses[1]["id"])),
            StageMove("m2", str(other["id"]), str(main["id"]), "142"),
        ]
    )
    assert [r.ok for r in moved] == [True, True] and moved[0].crm_id == str(lead["id"])
    assert sandbox.lead(other["id"])["status_id"] == 142
    sent = next(e for e in reversed(sandbox.requests()) if e["route"] == "PATCH /api/v4/leads")
    assert sent["batch"] == 2

    updated = await connector.update_deal_fields(
        [
            FieldUpdate("u1", str(lead["id"]), {field.id: "7701234567"}, amount=Decimal("1999.5")),
        ]
    )
    assert updated[0].ok
    [deal] = await connector.get_deals([str(lead["id"])])
    # price is an integer in amoCRM: the amount rounds half up to whole units.
    assert deal.fields[field.id] == "7701234567" and deal.amount == Decimal(2000)
    assert deal.stage_id == str(statuses[1]["id"])

    tasks = await connector.create_tasks(
        [
            NewTask(
                "t1",
                str(lead["id"]),
                "Позвонить",
                datetime.now(UTC) + timedelta(days=1),
                "8000002",
                "про ИНН",
            )
        ]
    )
    assert tasks[0].ok and tasks[0].crm_id
    later = datetime(2031, 5, 6, 7, 0, tzinfo=UTC)
    moved = await connector.move_task_deadlines([TaskDeadline("m1", tasks[0].crm_id, later)])
    assert moved[0].ok
    stored = sandbox.api("GET", "/api/v4/tasks").json()["_embedded"]["tasks"]
    assert [t["complete_till"] for t in stored if str(t["id"]) == tasks[0].crm_id] == [int(later.timestamp())]
    notes = await connector.add_comments(
        [NewComment("n1", str(lead["id"]), "Статус изменён интеграцией [fs:7]")]
    )
    assert notes[0].ok and notes[0].crm_id
    # Crash recovery: what we created is found by the marker in its text, what we did not is absent.
    lookups = [CreatedLookup("a", str(lead["id"]), "[fs:7]"), CreatedLookup("b", str(lead["id"]), "[fs:8]")]
    assert await connector.find_created("comment", lookups) == {"a": notes[0].crm_id}
    assert await connector.find_created("task", [CreatedLookup("t", str(lead["id"]), "про ИНН")]) == {
        "t": tasks[0].crm_id
    }

    counts = await connector.count_deals_in_stages(
        [
            s
            for s in (await connector.list_pipelines())[0].stages
            if s.id in (str(statuses[1]["id"]), "142", "143")
        ]
    )
    assert counts == {str(statuses[1]["id"]): 1, "142": 1, "143": 0}

    since = datetime.now(UTC) - timedelta(minutes=5)
    pages = [page async for page in connector.list_deals_modified_since(since)]
    ids = [d.id for page in pages for d in page]
    assert set(ids) == {str(lead["id"]), str(other["id"])}
    everything = [d.id for page in [p async for p in connector.list_all_deals()] for d in page]
    assert everything == sorted(everything, key=int)


async def test_only_changed_fields_are_sent(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    lead = sandbox.create_lead(name="L")
    main = sandbox.main_pipeline()
    await connector.move_deals([StageMove("m", str(lead["id"]), str(main["id"]), "143")])
    sent = sandbox.requests()[-1]
    assert sent["route"] == "PATCH /api/v4/leads"
    assert sent["body"] == [
        {"id": lead["id"], "pipeline_id": main["id"], "status_id": 143, "request_id": "0"}
    ]
    stored = sandbox.lead(lead["id"])
    assert (stored["name"], stored["status_id"], stored["closed_at"] is not None) == ("L", 143, True)


async def test_webhook_subscription_api(sandbox: Sandbox, connector: AmoCRMConnector) -> None:
    assert await connector.list_webhooks() == []
    events = ("add_lead", "update_lead", "status_lead", "delete_lead", "restore_lead", "responsible_lead")
    hook = await connector.register_webhook("https://example.com/amo/hook", events)
    assert (hook.url, hook.events, hook.disabled) == ("https://example.com/amo/hook", events, False)
    assert [h.url for h in await connector.list_webhooks()] == ["https://example.com/amo/hook"]
    await connector.unregister_webhook("https://example.com/amo/hook")
    await connector.unregister_webhook("https://example.com/amo/hook")  # not there: no error
    assert await connector.list_webhooks() == []
