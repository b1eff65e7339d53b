"""Automations and the qualification bot in templates: schema, validation, the renderer, the library's
encoded automations and how the CLI shows them."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from funnel_templates.automations import (
    BeforeDateTrigger,
    CreateDealAction,
    LostTrigger,
    NotifyAction,
    RecurringTrigger,
    StageEntryTrigger,
)
from funnel_templates.loader import TemplateError, library, load_templates
from funnel_templates.placeholders import (
    FIXED_PLACEHOLDERS,
    MissingPlaceholderValues,
    placeholders,
    render,
)
from funnel_templates.schema import FunnelTemplate
from tests.funnel_templates.test_validation import valid_template, write
from tests.support.cli import run_cli

Change = Callable[[dict[str, Any]], None]


def notify(**overrides: Any) -> dict[str, Any]:
    action = {
        "kind": "notify",
        "channels": ["telegram", "sms"],
        "message": {
            "ru": "{contact.name}, встреча {deal.meeting_at}",
            "en": "{contact.name}, meeting {deal.meeting_at}",
        },
    }
    return {**action, **overrides}


def with_automations() -> dict[str, Any]:
    """The validation tests' sample plus one automation of each trigger and action kind."""
    data = valid_template()
    data["fields"] += [
        {"code": "level", "name": {"ru": "Уровень", "en": "Level"}, "type": "enum",
         "options": [{"code": "basic", "name": {"ru": "Базовый", "en": "Basic"}}]},
        {"code": "vip", "name": {"ru": "VIP", "en": "VIP"}, "type": "boolean"},
        {"code": "city", "name": {"ru": "Город", "en": "City"}, "type": "string"},
        {"code": "due_on", "name": {"ru": "Срок", "en": "Due"}, "type": "date"},
    ]  # fmt: skip
    name = {"ru": "Автоматизация", "en": "Automation"}
    data["automations"] = [
        {"code": "reminder", "name": name, "trigger": {"kind": "before_date", "field": "meeting_at", "offset": "1d"},
         "only_in_stages": ["MEETING"], "actions": [notify()]},
        {"code": "welcome", "name": name, "trigger": {"kind": "stage_entry", "stage": "NEW"},
         "actions": [notify(channels=["email"], subject={"ru": "Тема", "en": "Subject"})]},
        {"code": "nudge", "name": name, "derived": True, "trigger": {"kind": "stalled", "stage": "NEW", "after": "2d"},
         "actions": [{"kind": "move", "stage": "MEETING"}, {"kind": "task", "title": name, "due_in": "1h"}]},
        {"code": "after_meeting", "name": name, "trigger": {"kind": "after_date", "field": "due_on", "offset": "0s"},
         "actions": [{"kind": "set_field", "field": "level", "value": "basic"},
                     {"kind": "set_field", "field": "vip", "value": True},
                     {"kind": "set_field", "field": "due_on", "value": "2026-01-31"},
                     {"kind": "set_field", "field": "amount", "value": 1500}]},
        {"code": "thanks", "name": name, "trigger": {"kind": "won", "delay": "7d"},
         "actions": [{"kind": "webhook", "event": "deal.won_week"}]},
        {"code": "win_back", "name": name, "trigger": {"kind": "lost", "delay": "90d", "reasons": ["spam"]},
         "actions": [{"kind": "create_deal", "funnel": "test.sample", "stage": "MEETING",
                      "title": {"ru": "Повтор: {deal.title}", "en": "Again: {deal.title}"}}]},
        {"code": "monthly", "name": name, "trigger": {"kind": "recurring", "every_months": 1},
         "actions": [{"kind": "create_deal", "funnel": "general.typical", "title": name}]},
    ]  # fmt: skip
    data["qualification"] = {
        "questions": [
            {"code": "level", "text": name, "field": "level",
             "options": [{"code": "basic", "name": name, "score": 2}]},
            {"code": "vip", "text": name, "field": "vip",
             "options": [{"code": "yes", "name": name, "score": 1}, {"code": "no", "name": name, "score": 0}]},
            {"code": "city", "text": name, "field": "city"},
            {"code": "budget", "text": name, "field": "amount"},
        ],
        "qualified_stage": "MEETING",
        "rejected_stage": "LOST",
        "threshold": 2,
    }  # fmt: skip
    return data


def test_every_trigger_and_action_kind_loads(tmp_path: Path) -> None:
    [template] = load_templates([write(tmp_path, with_automations())])
    by_code = {a.code: a for a in template.automations}
    reminder = by_code["reminder"].trigger
    assert isinstance(reminder, BeforeDateTrigger) and reminder.offset == timedelta(days=1)
    assert isinstance(by_code["win_back"].trigger, LostTrigger) and by_code["win_back"].trigger.reasons == [
        "spam"
    ]
    monthly = by_code["monthly"].trigger
    assert isinstance(monthly, RecurringTrigger) and monthly.starting == "won"
    assert [a.kind for a in by_code["nudge"].actions] == ["move", "task"] and by_code["nudge"].derived
    assert template.qualification is not None and template.qualification.max_score() == 3


def test_json_form_loads_back_unchanged(tmp_path: Path) -> None:
    [template] = load_templates([write(tmp_path, with_automations())])
    dumped = template.model_dump(mode="json")
    assert dumped["automations"][0]["trigger"] == {
        "kind": "before_date",
        "field": "meeting_at",
        "offset": "1d",
    }
    assert FunnelTemplate.model_validate(dumped) == template


def at(index: int, *path: Any) -> Callable[[Any], Change]:
    """A change that sets automations[index].<path> to a value."""

    def setter(value: Any) -> Change:
        def change(data: dict[str, Any]) -> None:
            node = data["automations"][index]
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value

        return change

    return setter


def qual(*path: Any) -> Callable[[Any], Change]:
    def setter(value: Any) -> Change:
        def change(data: dict[str, Any]) -> None:
            node = data["qualification"]
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value

        return change

    return setter


# (change, field path in the problem, part of the reason)
CASES = [
    pytest.param(at(1, "code")("reminder"), "automations", "duplicate automation code 'reminder'", id="dup-code"),
    pytest.param(at(0, "code")("Reminder"), "automations.Reminder.code", "lowercase Latin", id="code-shape"),
    pytest.param(at(1, "trigger", "stage")("NOPE"), "automations.welcome.trigger",
                 "automation 'welcome': stage 'NOPE' is not a stage", id="entry-stage"),
    pytest.param(at(2, "trigger", "stage")("NOPE"), "automations.nudge.trigger", "'NOPE' is not a stage", id="stalled-stage"),
    pytest.param(at(0, "trigger", "field")("city"), "automations.reminder.trigger",
                 "field 'city' must be a declared date or datetime field", id="date-field-type"),
    pytest.param(at(3, "trigger", "field")("nope"), "automations.after_meeting.trigger",
                 "'nope' must be a declared date", id="date-field-undeclared"),
    pytest.param(at(5, "trigger", "reasons")(["nope"]), "automations.win_back.trigger",
                 "loss reason 'nope' is not declared", id="loss-reason"),
    pytest.param(at(0, "trigger")({"kind": "someday"}), "automations.reminder.trigger", "'someday'", id="trigger-kind"),
    pytest.param(at(6, "trigger", "every_months")(0), "automations.monthly.trigger.every_months",
                 "greater than or equal to 1", id="every-0-months"),
    pytest.param(at(0, "only_in_stages")(["NOPE"]), "automations.reminder.only_in_stages",
                 "'NOPE' is not a stage", id="only-in-stage"),
    pytest.param(at(0, "actions")([]), "automations.reminder.actions", "at least 1", id="no-actions"),
    pytest.param(at(2, "actions", 0, "stage")("NOPE"), "automations.nudge.actions[0]", "'NOPE' is not a stage", id="move-stage"),
    pytest.param(at(2, "actions", 1, "assignee")("boss"), "automations.nudge.actions[1]",
                 "undeclared role 'boss'", id="task-role"),
    pytest.param(at(0, "actions", 0, "message", "ru")("Привет, {deal.nope}"), "automations.reminder.actions[0]",
                 "unknown placeholder {deal.nope} in the ru text", id="placeholder-ru"),
    pytest.param(at(0, "actions", 0, "message", "en")("Hi {Contact.Name}"), "automations.reminder.actions[0]",
                 "unknown placeholder {Contact.Name} in the en text", id="placeholder-en"),
    pytest.param(at(5, "actions", 0, "title", "ru")("{deal.titel}"), "automations.win_back.actions[0]",
                 "unknown placeholder {deal.titel}", id="placeholder-title"),
    pytest.param(at(0, "actions", 0, "message")({"ru": "Только по-русски"}), "automations.reminder.actions[0].message.en",
                 "Field required", id="message-needs-en"),
    pytest.param(at(0, "actions", 0, "channels")([]), "automations.reminder.actions[0].channels",
                 "at least 1", id="no-channels"),
    pytest.param(at(0, "actions", 0, "channels")(["sms", "sms"]), "automations.reminder.actions[0].channels",
                 "name a channel twice", id="channel-twice"),
    pytest.param(at(0, "actions", 0, "channels")(["whatsapp"]), "automations.reminder.actions[0].channels[0]",
                 "'telegram', 'sms' or 'email'", id="unknown-channel"),
    pytest.param(at(1, "actions", 0, "subject")(None), "automations.welcome.actions[0]",
                 "may go by email needs a 'subject'", id="email-without-subject"),
    pytest.param(at(0, "actions", 0, "subject")({"ru": "Тема", "en": "Subject"}), "automations.reminder.actions[0]",
                 "'subject' is for email", id="subject-without-email"),
    pytest.param(at(3, "actions", 0, "field")("nope"), "automations.after_meeting.actions[0]",
                 "sets undeclared field 'nope'", id="set-undeclared"),
    pytest.param(at(3, "actions", 0, "value")("gold"), "automations.after_meeting.actions[0]",
                 "value 'gold' does not fit field 'level' of type 'enum' (options: basic)", id="set-enum"),
    pytest.param(at(3, "actions", 1, "value")("yes"), "automations.after_meeting.actions[1]",
                 "does not fit field 'vip' of type 'boolean'", id="set-boolean"),
    pytest.param(at(3, "actions", 2, "value")("31.01.2026"), "automations.after_meeting.actions[2]",
                 "does not fit field 'due_on' of type 'date'", id="set-date"),
    pytest.param(at(3, "actions", 3, "value")("много"), "automations.after_meeting.actions[3]",
                 "amount must be set to a number", id="set-amount"),
    pytest.param(at(4, "actions", 0, "event")("Deal Won"), "automations.thanks.actions[0].event",
                 "dot-separated lowercase", id="webhook-event"),
    pytest.param(at(5, "actions", 0, "stage")("NOPE"), "automations.win_back.actions[0]",
                 "'NOPE' is not a stage", id="create-deal-own-stage"),
    pytest.param(qual("questions", 2, "field")("nope"), "qualification.questions.city",
                 "answer field 'nope' is not declared", id="question-field"),
    pytest.param(qual("questions", 1, "code")("level"), "qualification.questions",
                 "duplicate question code 'level'", id="dup-question"),
    pytest.param(qual("questions", 0, "options")([]), "qualification.questions.level",
                 "enum field 'level' needs options", id="enum-without-options"),
    pytest.param(qual("questions", 0, "options", 0, "code")("gold"), "qualification.questions.level",
                 "options ['gold'] are not values of enum field 'level'", id="enum-option"),
    pytest.param(qual("questions", 1, "options", 0, "code")("da"), "qualification.questions.vip",
                 "are not values of boolean field 'vip': ['no', 'yes']", id="boolean-option"),
    pytest.param(qual("questions", 3, "options")([{"code": "big", "name": {"ru": "М", "en": "L"}, "score": 1}]),
                 "qualification.questions.budget", "money answer is typed in", id="options-on-money"),
    pytest.param(qual("qualified_stage")("NOPE"), "qualification.qualified_stage", "'NOPE' is not a stage", id="qualified-stage"),
    pytest.param(qual("rejected_stage")("MEETING"), "qualification", "must differ", id="same-stages"),
    pytest.param(qual("threshold")(4), "qualification.threshold", "highest possible score 3", id="threshold-unreachable"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "field", "reason"), CASES)
def test_a_bad_automation_is_rejected_naming_it(
    tmp_path: Path, change: Change, field: str, reason: str
) -> None:
    data = copy.deepcopy(with_automations())
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(TemplateError) as caught:
        load_templates([path])
    problems = caught.value.problems
    # One mistake can break more than one rule (options removed also lower the reachable score).
    assert {(p.file, p.template) for p in problems} == {(str(path), "test.sample")}, problems
    assert any(p.field == field and reason in p.reason for p in problems), problems


def test_create_deal_must_name_a_library_or_loaded_funnel(tmp_path: Path) -> None:
    data = with_automations()
    data["automations"][6]["actions"][0]["funnel"] = "general.nope"
    with pytest.raises(TemplateError) as caught:
        load_templates([write(tmp_path, data)])
    [problem] = caught.value.problems
    assert problem.field == "automations.monthly.actions[0]"
    assert problem.reason == "automation 'monthly': creates a deal in unknown funnel template 'general.nope'"


def test_create_deal_stage_must_exist_in_the_target_funnel(tmp_path: Path) -> None:
    data = with_automations()
    data["automations"][6]["actions"][0]["stage"] = "MEETING"  # test.sample's, not general.typical's
    with pytest.raises(TemplateError) as caught:
        load_templates([write(tmp_path, data)])
    assert [p.reason for p in caught.value.problems] == [
        "automation 'monthly': stage 'MEETING' is not a stage of 'general.typical'"
    ]


def test_create_deal_may_name_another_file_being_validated(tmp_path: Path) -> None:
    other = copy.deepcopy(valid_template())
    other["key"] = "test.other"
    data = with_automations()
    data["automations"][6]["actions"][0].update(funnel="test.other", stage="MEETING")
    loaded = load_templates([write(tmp_path, data), write(tmp_path, other, "other.yaml")])
    assert sorted(t.key for t in loaded) == ["test.other", "test.sample"]


def test_templates_validate_checks_links_against_the_library(tmp_path: Path) -> None:
    data = with_automations()
    good = write(tmp_path, data)
    assert run_cli("templates", "validate", str(good)).returncode == 0
    data["automations"][6]["actions"][0]["funnel"] = "general.nope"
    result = run_cli("templates", "validate", str(write(tmp_path, data)))
    assert result.returncode == 2
    assert (
        "automations.monthly.actions[0]: automation 'monthly': creates a deal in unknown funnel"
        in result.stderr
    )


# --- renderer ---------------------------------------------------------------------------------


def test_placeholders_in_order_each_once() -> None:
    text = "{contact.name}, {deal.visit_at} — {contact.name} {optout_url}"
    assert placeholders(text) == ["contact.name", "deal.visit_at", "optout_url"]
    assert placeholders("без подстановок") == []


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("Здравствуйте, {contact.name}!", {"contact.name": "Анна"}, "Здравствуйте, Анна!"),
        ("{deal.amount} ₽ · {deal.amount} ₽", {"deal.amount": 1500}, "1500 ₽ · 1500 ₽"),
        ("Без подстановок", {}, "Без подстановок"),
        ("{company.name}: {optout_url}", {"company.name": "Клиника", "optout_url": "https://x/o/1", "x": 1},
         "Клиника: https://x/o/1"),
    ],
)  # fmt: skip
def test_render_substitutes_every_placeholder(text: str, values: dict[str, object], expected: str) -> None:
    assert render(text, values) == expected


@pytest.mark.parametrize("missing", [{}, {"contact.name": None}, {"contact.name": ""}])
def test_render_refuses_a_text_with_a_missing_value(missing: dict[str, object]) -> None:
    with pytest.raises(MissingPlaceholderValues) as caught:
        render("{contact.name}, приём {deal.visit_at}", {"deal.visit_at": "завтра", **missing})
    assert caught.value.names == ["contact.name"]


# --- the library ------------------------------------------------------------------------------


def test_every_library_text_renders_with_a_full_set_of_values() -> None:
    """Each notification and title in the library names only placeholders a sender can fill."""
    for template in library().values():
        values = {name: "x" for name in FIXED_PLACEHOLDERS} | {f"deal.{f.code}": "x" for f in template.fields}
        for automation in template.automations:
            for action in automation.actions:
                texts = [action.message, action.subject] if isinstance(action, NotifyAction) else []
                for text in filter(None, texts):
                    assert "{" not in render(text.ru, values) + render(text.en, values), automation.code


def notifications(template: FunnelTemplate, trigger_kind: str) -> list[NotifyAction]:
    return [
        action
        for automation in template.automations
        if automation.trigger.kind == trigger_kind
        for action in automation.actions
        if isinstance(action, NotifyAction)
    ]


@pytest.mark.parametrize(
    ("key", "field", "offset"),
    [
        ("medical.new_clients", "visit_at", timedelta(days=1)),
        ("dentistry.new_clients", "visit_at", timedelta(days=1)),
        ("dentistry.regular_clients", "visit_at", timedelta(days=1)),
        ("auto_service.maintenance", "visit_at", timedelta(days=1)),
        ("medical.regular_clients", "checkup_due_at", timedelta(days=7)),
        ("auto_service.regular_clients", "next_service_at", timedelta(days=7)),
        ("sports.renewals", "membership_ends_at", timedelta(days=14)),
    ],
)
def test_date_reminders_are_encoded(key: str, field: str, offset: timedelta) -> None:
    template = library()[key]
    reminders = [
        a
        for a in template.automations
        if isinstance(a.trigger, BeforeDateTrigger) and (a.trigger.field, a.trigger.offset) == (field, offset)
    ]
    assert reminders, f"{key}: no reminder {offset} before {field}"
    assert any(isinstance(action, NotifyAction) for action in reminders[0].actions)


def test_surveys_and_nudges_are_encoded() -> None:
    qualification = library()["by_goal.qualification"]
    nudges = [
        a
        for a in qualification.automations
        if a.trigger == StageEntryTrigger(kind="stage_entry", stage="NO_CONTACT")
    ]
    channels = sorted(tuple(n.channels) for a in nudges for n in a.actions if isinstance(n, NotifyAction))
    assert channels == [("email",), ("sms",)] and not any(a.derived for a in nudges)
    for key, stage in [("auto_service.regular_clients", "SATISFACTION"), ("base.feedback", "COLLECT_REVIEWS"),
                       ("base.win_back", "LOSS_ANALYSIS")]:  # fmt: skip
        surveys = [
            a
            for a in library()[key].automations
            if a.trigger == StageEntryTrigger(kind="stage_entry", stage=stage)
        ]
        assert surveys and notifications(library()[key], "stage_entry"), key


def test_follow_on_deals_are_encoded() -> None:
    repeat = library()["wholesale.regular_supplies"].automations
    [recurring] = [a for a in repeat if isinstance(a.trigger, RecurringTrigger)]
    [create] = recurring.actions
    assert isinstance(create, CreateDealAction) and create.funnel == "wholesale.regular_supplies"
    [win_back] = [a for a in library()["base.new_sales"].automations if isinstance(a.trigger, LostTrigger)]
    assert win_back.trigger.delay == timedelta(days=90) and win_back.derived
    assert [(a.kind, getattr(a, "funnel", None)) for a in win_back.actions] == [
        ("create_deal", "base.win_back")
    ]


def test_course_email_carries_the_payment_link() -> None:
    [email] = notifications(library()["education.online_courses"], "stage_entry")[:1]
    assert email.channels == ["email"] and email.subject is not None
    assert "{deal.payment_url}" in email.message.ru and "{deal.payment_url}" in email.message.en


@pytest.mark.parametrize(("key", "fields"), [
    ("by_goal.qualification", {"budget_range", "authority", "need", "timing"}),
    ("base.qualification", {"company_size", "budget_range", "needs"}),
])  # fmt: skip
def test_qualification_bots_ask_the_articles_questions(key: str, fields: set[str]) -> None:
    bot = library()[key].qualification
    assert bot is not None and {q.field for q in bot.questions} == fields
    assert 0 < bot.threshold <= bot.max_score()


def test_cli_shows_automations_and_json_includes_them() -> None:
    shown = run_cli("templates", "show", "sports.renewals")
    assert shown.returncode == 0, shown.stderr
    assert "renewal_offer" in shown.stdout and "2w before membership_ends_at" in shown.stdout
    assert "notify via telegram > sms > email" in shown.stdout
    listed = json.loads(run_cli("templates", "list", "--json", "--niche", "by_goal").stdout)
    [qualification] = [t for t in listed if t["key"] == "by_goal.qualification"]
    assert {a["code"] for a in qualification["automations"]} >= {
        "could_not_reach_sms",
        "could_not_reach_email",
    }
    assert qualification["qualification"]["threshold"] == 4
