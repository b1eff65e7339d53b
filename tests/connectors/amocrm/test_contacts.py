"""A lead's contacts and new leads through AmoCRMConnector against the sandbox over real HTTP."""

from __future__ import annotations

from decimal import Decimal

import pytest

from connectors.amocrm import AmoCRMConnector
from connectors.base import ContactInfo, CreatedLookup, NewDeal, NotSupported, PermanentError
from tests.connectors.amocrm.conftest import ConnectorFactory, Sandbox, running_sandbox


def _multitext(code: str, *values: tuple[str, str]) -> dict[str, object]:
    return {"field_code": code, "values": [{"value": v, "enum_code": kind} for v, kind in values]}


def _seed(sandbox: Sandbox) -> tuple[int, int, int, dict[str, int]]:
    """Lead one: two contacts, the second made main; lead two: one with a Telegram field; three: none."""
    sandbox.control(
        "POST", "/_sandbox/contact_fields", {"name": "Telegram", "type": "text", "code": "TELEGRAM"}
    )
    first, second, third = (int(sandbox.create_lead(name=f"Lead {n}")["id"]) for n in range(3))
    anna = sandbox.create_contact(
        first, name="Anna Ivanova", custom_fields_values=[_multitext("PHONE", ("+79000000001", "MOB"))]
    )
    boris = sandbox.create_contact(
        first,
        is_main=True,
        name="Boris",
        custom_fields_values=[
            _multitext("PHONE", ("+79000000002", "MOB"), ("+74950000000", "WORK")),
            _multitext("EMAIL", ("boris@example.com", "WORK")),
        ],
    )
    vera = sandbox.create_contact(
        second,
        first_name="Vera",
        custom_fields_values=[{"field_code": "TELEGRAM", "values": [{"value": "@vera_tg"}]}],
    )
    return first, second, third, {"anna": anna, "boris": boris, "vera": vera}


async def test_contacts_of_several_leads_main_first_in_two_requests(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    first, second, third, ids = _seed(sandbox)
    connector = make_connector(sandbox, telegram_field="TELEGRAM")
    sandbox.reset_stats()
    got = await connector.get_deal_contacts([str(first), str(second), str(third), "99"])
    assert sandbox.stats()["requests"] == {"GET /api/v4/leads": 1, "GET /api/v4/contacts": 1}
    assert got[str(first)] == [
        ContactInfo(
            str(ids["boris"]),
            "Boris",
            phones=("+79000000002", "+74950000000"),
            emails=("boris@example.com",),
            is_primary=True,
        ),
        ContactInfo(str(ids["anna"]), "Anna Ivanova", phones=("+79000000001",)),
    ]
    assert got[str(second)] == [ContactInfo(str(ids["vera"]), "Vera", telegram="@vera_tg", is_primary=True)]
    assert got[str(third)] == [] and got["99"] == []


async def test_telegram_is_read_only_from_the_configured_field(
    sandbox: Sandbox, connector: AmoCRMConnector
) -> None:
    _, second, _, _ = _seed(sandbox)
    [vera] = (await connector.get_deal_contacts([str(second)]))[str(second)]
    assert vera.telegram is None  # no field configured: amoCRM has no standard Telegram field


async def test_create_leads_in_batches_with_item_errors_and_linked_contacts(
    sandbox: Sandbox, connector: AmoCRMConnector
) -> None:
    pipeline = next(p for p in await connector.list_pipelines() if p.is_main)
    stage = next(s for s in pipeline.stages if s.editable and s.semantics == "process")
    client = sandbox.create_contact(
        name="Client", custom_fields_values=[_multitext("PHONE", ("+79001112233", "MOB"))]
    )
    good = NewDeal(
        "ok", pipeline.id, stage.id, "Win-back offer", contact_ids=(str(client),), amount=Decimal("4500")
    )
    bad_stage = NewDeal("bad-stage", pipeline.id, "999", "Wrong stage")
    bad_contact = NewDeal("bad-contact", pipeline.id, stage.id, "Ghost client", contact_ids=("987654",))
    filler = [NewDeal(f"n{i}", pipeline.id, stage.id, f"Repeat sale {i}") for i in range(48)]
    sandbox.reset_stats()
    results = await connector.create_deals([good, bad_stage, bad_contact, *filler])
    stats = sandbox.stats()
    # 50 refused for two items, the 48 others sent again, then the 51st: three POSTs.
    assert stats["batch_sizes"]["POST /api/v4/leads"] == [50, 48, 1]
    assert [r.ref for r in results] == ["ok", "bad-stage", "bad-contact", *(f"n{i}" for i in range(48))]
    assert results[0].ok and all(r.ok and r.crm_id for r in results[3:])
    for failed in results[1:3]:
        assert isinstance(failed.error, PermanentError) and failed.error.item_ref == failed.ref
        assert failed.error.crm_code == "NotSupportedChoice" and failed.crm_id is None
    assert "_embedded.contacts.0.id" in (results[2].error.crm_text if results[2].error else "")
    deal_id = results[0].crm_id
    assert deal_id is not None
    [deal] = await connector.get_deals([deal_id])
    assert (deal.pipeline_id, deal.stage_id, deal.title) == (pipeline.id, stage.id, "Win-back offer")
    assert deal.amount == Decimal("4500")
    contacts = await connector.get_deal_contacts([deal_id])
    assert [(c.id, c.is_primary, c.phones) for c in contacts[deal_id]] == [
        (str(client), True, ("+79001112233",))
    ]


async def test_a_created_lead_cannot_be_looked_up_by_marker(connector: AmoCRMConnector) -> None:
    with pytest.raises(NotSupported):
        await connector.find_created("deal", [CreatedLookup("1", "0", "[fs:1]")])


async def test_leads_saved_despite_a_400_are_found_not_created_twice(
    make_connector: ConnectorFactory,
) -> None:
    with running_sandbox(partial_bulk_saves=True) as box:  # the valid items of a refused request are kept
        connector = make_connector(box)
        pipeline = next(p for p in await connector.list_pipelines() if p.is_main)
        stage = next(s for s in pipeline.stages if s.editable and s.semantics == "process")
        twins = [NewDeal(ref, pipeline.id, stage.id, "Repeat sale") for ref in ("a", "b")]
        results = await connector.create_deals([*twins, NewDeal("bad", pipeline.id, "999", "Wrong stage")])
        assert box.stats()["batch_sizes"]["POST /api/v4/leads"] == [3]  # nothing sent twice
        assert [r.ok for r in results] == [True, True, False]
        leads = box.api("GET", "/api/v4/leads", params={"filter[pipeline_id][]": pipeline.id}).json()
        saved = sorted(
            str(lead["id"]) for lead in leads["_embedded"]["leads"] if lead["name"] == "Repeat sale"
        )
        assert sorted(str(r.crm_id) for r in results[:2]) == saved and len(saved) == 2
