"""Pure parts of the bot: reading Updates, commands, the language, the responsible user, the values
an answer writes. Table tests: no database, no network."""

from __future__ import annotations

from typing import Any

import pytest

from app.automations.qualification import Finished
from app.bot.service import (
    BotTarget,
    _command,
    _language,
    callback_data,
    deal_fields,
    deal_payload,
    responsible_id,
)
from connectors.channels.telegram_bot import Incoming, parse_update
from funnel_templates.loader import library

TEMPLATE = library()["by_goal.qualification"]
PRIVATE = {"id": 42, "type": "private"}


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        (
            {
                "update_id": 7,
                "message": {
                    "chat": PRIVATE,
                    "text": "Hi",
                    "from": {"first_name": "Ann", "username": "ann", "language_code": "en"},
                },
            },
            Incoming(7, "42", "Hi", "Ann", "", "ann", "en", None),
        ),
        (
            {
                "update_id": 8,
                "callback_query": {
                    "id": "99",
                    "data": "budget:none",
                    "message": {"chat": PRIVATE},
                    "from": {"first_name": "Ann"},
                },
            },
            Incoming(8, "42", "budget:none", "Ann", callback_id="99"),
        ),
        (
            {"update_id": 9, "message": {"chat": {"id": -5, "type": "group"}, "text": "Hi"}},
            None,
        ),  # not a private chat
        ({"update_id": 10, "message": {"chat": PRIVATE, "sticker": {}}}, None),  # no text
        ({"update_id": 11, "edited_message": {"chat": PRIVATE, "text": "Hi"}}, None),
        ({"message": {"chat": PRIVATE, "text": "Hi"}}, None),  # no update id
    ],
)
def test_parse_update(update: dict[str, Any], expected: Incoming | None) -> None:
    assert parse_update(update) == expected


@pytest.mark.parametrize(
    ("text", "callback", "command"),
    [
        ("/start", None, "start"),
        ("/start ref42", None, "start"),
        ("/STOP@funnelsync_bot", None, "stop"),
        ("/help", None, None),
        ("start", None, None),
        ("/", None, None),
        ("/start", "1", None),
    ],
)
def test_commands(text: str, callback: str | None, command: str | None) -> None:
    assert _command(Incoming(1, "42", text, callback_id=callback)) == command


def _target(**settings: Any) -> BotTarget:
    spec = TEMPLATE.qualification
    assert spec is not None
    keys = {f.code: f"UF_CRM_{f.code.upper()}" for f in TEMPLATE.fields}
    # Bitrix24 list item ids, as provisioning records them (app.funnels.apply.option_mappings).
    options = {"budget_range": {"none": "40", "under_100k": "41"}}
    stages = {s.code: f"C5:{s.code}" for s in TEMPLATE.stages}
    return BotTarget(1, "acme", "bitrix24", settings, TEMPLATE, spec, "5", stages, keys, options)


@pytest.mark.parametrize(
    ("language_code", "settings", "language"),
    [
        ("en-GB", {}, "en"),
        ("ru", {"messaging": {"language": "en"}}, "ru"),
        ("de", {"messaging": {"language": "en"}}, "en"),
        (None, {}, "ru"),
    ],
)
def test_language_is_the_users_if_spoken_else_the_connections(
    language_code: str | None, settings: dict[str, Any], language: str
) -> None:
    assert (
        _language(_target(**settings), Incoming(1, "42", "/start", language_code=language_code)) == language
    )


def test_responsible_is_an_assigned_template_role_else_the_supervisor() -> None:
    repair = library()["auto_service.repair"]  # declares roles
    first, second = (r.code for r in repair.roles[:2])
    assert responsible_id(repair, {"supervisor_id": "7", "roles": {second: "13", first: "12"}}) == "12"
    assert responsible_id(repair, {"supervisor_id": "7", "roles": {second: "13"}}) == "13"
    assert responsible_id(TEMPLATE, {"supervisor_id": "7", "roles": {first: "12"}}) == "7"  # not its role
    assert responsible_id(TEMPLATE, {}) is None  # the CRM's default user


def test_answers_become_crm_values_by_field_type() -> None:
    finished = Finished(
        score=4,
        fields={"budget_range": "under_100k", "authority": "no", "need": "CRM", "timing": "later"},
        labels={},
        stage="LOST",
        qualified=False,
    )
    assert deal_fields(_target(), finished) == {
        "UF_CRM_BUDGET_RANGE": "41",  # enum: the option's id the CRM gave it
        "UF_CRM_AUTHORITY": False,  # boolean
        "UF_CRM_NEED": "CRM",  # typed text
        "UF_CRM_TIMING": "Позже",  # a string field takes the option's name
    }


def test_an_amount_answer_is_the_new_deals_own_amount() -> None:
    finished = Finished(
        score=4, fields={"amount": "150 000,50", "need": "CRM"}, labels={}, stage="LOST", qualified=False
    )
    payload = deal_payload(_target(), finished, Incoming(1, "42", "x", first_name="Иван"))
    assert payload["amount"] == "150000.50"
    assert payload["fields"] == {"UF_CRM_NEED": "CRM"}
    typed = Finished(score=0, fields={"amount": "много"}, labels={}, stage="LOST", qualified=False)
    assert deal_payload(_target(), typed, Incoming(1, "42", "x"))["amount"] is None  # not a number


def test_callback_data_fits_telegrams_64_bytes() -> None:
    assert callback_data("budget", "none") == "budget:none"
    with pytest.raises(ValueError, match="64 bytes"):
        callback_data("q" * 40, "o" * 30)
