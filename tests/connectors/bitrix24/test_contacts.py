"""A deal's contacts and new deals through Bitrix24Connector against the sandbox over real HTTP, and
the sandbox's contact shapes read with an independent client (fast_bitrix24)."""

from __future__ import annotations

from decimal import Decimal

from fast_bitrix24 import Bitrix

from connectors.base import ContactInfo, CreatedLookup, NewDeal, PermanentError
from connectors.bitrix24.client import Bitrix24Connector
from tests.connectors.bitrix24.conftest import Sandbox


def _phone(value: str, kind: str = "MOBILE") -> list[dict[str, str]]:
    return [{"VALUE": value, "VALUE_TYPE": kind}]


def _seed_contacts(sandbox: Sandbox) -> tuple[int, int, int, dict[str, int]]:
    """Deal one: two contacts, the second made primary; deal two: one with Telegram; deal three: none."""
    first, second, third = (sandbox.create_deal(TITLE=f"Deal {n}") for n in range(3))
    anna = sandbox.create_contact(first, NAME="Anna", LAST_NAME="Ivanova", PHONE=_phone("+7 900 000-00-01"))
    boris = sandbox.create_contact(
        first,
        primary=True,
        NAME="Boris",
        PHONE=_phone("+79000000002") + _phone("+74950000000", "WORK"),
        EMAIL=[{"VALUE": "boris@example.com", "VALUE_TYPE": "WORK"}],
    )
    vera = sandbox.create_contact(
        second,
        NAME="Vera",
        IM=[{"VALUE": "vera_skype", "VALUE_TYPE": "SKYPE"}, {"VALUE": "@vera_tg", "VALUE_TYPE": "TELEGRAM"}],
    )
    return first, second, third, {"anna": anna, "boris": boris, "vera": vera}


async def test_contacts_of_several_deals_primary_first_in_two_requests(
    sandbox: Sandbox, connector: Bitrix24Connector
) -> None:
    first, second, third, ids = _seed_contacts(sandbox)
    sandbox.reset_stats()
    got = await connector.get_deal_contacts([str(first), str(second), str(third), "9999"])
    stats = sandbox.stats()
    # One batch of binding reads, one batch of contact reads (multi-fields selected explicitly).
    assert stats["requests"] == 2 and stats["by_method"] == {"batch": 2}
    assert stats["commands"]["crm.deal.contact.items.get"] == 4 and stats["commands"]["crm.contact.list"] == 1
    assert got[str(first)] == [
        ContactInfo(
            str(ids["boris"]),
            "Boris",
            phones=("+79000000002", "+74950000000"),
            emails=("boris@example.com",),
            is_primary=True,
        ),
        ContactInfo(str(ids["anna"]), "Anna Ivanova", phones=("+7 900 000-00-01",)),
    ]
    assert got[str(second)] == [ContactInfo(str(ids["vera"]), "Vera", telegram="@vera_tg", is_primary=True)]
    assert got[str(third)] == [] and got["9999"] == []  # no contact; a deal that does not exist


def test_fast_bitrix24_reads_the_same_contact_shapes(sandbox: Sandbox) -> None:
    first, _, _, ids = _seed_contacts(sandbox)
    bx = Bitrix(sandbox.webhook_url, verbose=False)
    bindings = bx.call("crm.deal.contact.items.get", {"id": first}, raw=True)["result"]
    assert [(b["CONTACT_ID"], b["IS_PRIMARY"]) for b in bindings] == [(ids["anna"], "N"), (ids["boris"], "Y")]
    assert set(bindings[0]) == {"CONTACT_ID", "SORT", "ROLE_ID", "IS_PRIMARY"}
    everything = bx.get_all("crm.contact.list", {"filter": {"ID": ids["boris"]}})
    assert "PHONE" not in everything[0]  # "*" leaves the multi-fields out
    rows = bx.get_all(
        "crm.contact.list", {"filter": {"@ID": [ids["boris"]]}, "select": ["ID", "PHONE", "EMAIL"]}
    )
    phone = rows[0]["PHONE"][0]
    assert set(phone) == {"ID", "VALUE_TYPE", "VALUE", "TYPE_ID"} and phone["TYPE_ID"] == "PHONE"
    assert rows[0]["EMAIL"][0]["VALUE"] == "boris@example.com"


async def test_create_deals_in_batches_with_item_errors_and_bound_contacts(
    sandbox: Sandbox, connector: Bitrix24Connector
) -> None:
    pipeline = await connector.create_pipeline("Win-back", 200, [])
    stage = pipeline.stages[1]
    client = sandbox.create_contact(NAME="Client", PHONE=_phone("+79001112233"))
    good = NewDeal(
        "ok",
        pipeline.id,
        stage.id,
        "Win-back offer",
        contact_ids=(str(client),),
        amount=Decimal("4500"),
        marker="[fs:7]",
    )
    bad_stage = NewDeal("bad-stage", pipeline.id, "C999:NOPE", "Wrong stage")
    bad_contact = NewDeal("bad-contact", pipeline.id, stage.id, "Ghost client", contact_ids=("987654",))
    filler = [NewDeal(f"n{i}", pipeline.id, stage.id, f"Repeat sale {i}") for i in range(48)]
    sandbox.reset_stats()
    results = await connector.create_deals([good, bad_stage, bad_contact, *filler])
    stats = sandbox.stats()
    assert stats["by_method"] == {"batch": 2} and stats["commands"]["crm.item.add"] == 51  # 50 + 1
    assert [r.ref for r in results] == ["ok", "bad-stage", "bad-contact", *(f"n{i}" for i in range(48))]
    assert results[0].ok and all(r.ok for r in results[3:])
    for failed in results[1:3]:
        assert isinstance(failed.error, PermanentError) and failed.crm_id is None
        assert (
            failed.error.crm_code == "CRM_FIELD_ERROR_VALUE_NOT_VALID" and failed.error.item_ref == failed.ref
        )
    deal_id = results[0].crm_id
    assert deal_id is not None
    [deal] = await connector.get_deals([deal_id])
    assert (deal.pipeline_id, deal.stage_id, deal.title) == (pipeline.id, stage.id, "Win-back offer")
    assert deal.amount == Decimal("4500")
    contacts = await connector.get_deal_contacts([deal_id])
    assert [(c.id, c.is_primary, c.phones) for c in contacts[deal_id]] == [
        (str(client), True, ("+79001112233",))
    ]


async def test_a_created_deal_is_found_again_by_its_marker(connector: Bitrix24Connector) -> None:
    [created] = await connector.create_deals([NewDeal("41", "0", "NEW", "Repeat sale", marker="[fs:41]")])
    await connector.create_deals([NewDeal("43", "0", "NEW", "Someone else's", marker=None)])
    lookups = [CreatedLookup("41", "0", "[fs:41]"), CreatedLookup("42", "0", "[fs:42]")]
    assert await connector.find_created("deal", lookups) == {"41": created.crm_id}
