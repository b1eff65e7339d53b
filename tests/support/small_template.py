"""A small funnel template for the pure planner and rules-engine case tables.

Small enough to read next to the tables (six stages, three fields, two loss reasons, one role) yet
it has every rule kind: entry tasks for each assignee kind, an SLA, each missing-field action and a
follow-up with a lead time. `small_template(edit)` applies an edit to a copy of the raw data first,
so a case states only how its template differs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from funnel_templates.schema import FunnelTemplate

TemplateData = dict[str, Any]
TemplateEdit = Callable[[TemplateData], None]


def _text(ru: str, en: str) -> dict[str, str]:
    return {"ru": ru, "en": en}


SMALL: TemplateData = {
    "key": "test.small",
    "niche": "test",
    "name": _text("Малая воронка", "Small funnel"),
    "goal": "new_sales",
    "source": "tests",
    "stages": [
        {
            "code": "NEW",
            "name": _text("Новая", "New"),
            "temperature": "warm",
            "color": "#fffeb2",
            "tasks": [
                {"title": _text("Позвонить клиенту", "Call the client"), "due_in": "2h"},
                {
                    "title": _text("Согласовать скидку", "Agree a discount"),
                    "due_in": "1d",
                    "assignee": "supervisor",
                },
                {
                    "title": _text("Осмотреть автомобиль", "Inspect the car"),
                    "due_in": "30m",
                    "assignee": "mechanic",
                },
            ],
            "sla": {"within": "2h", "escalate_to": "supervisor"},
        },
        {
            "code": "QUALIFY",
            "name": _text("Квалификация", "Qualification"),
            "temperature": "warm",
            "color": "#ffdc7f",
            "required_fields": ["budget"],
            "on_missing_fields": "task",
        },
        {
            "code": "OFFER",
            "name": _text("Предложение", "Offer"),
            "temperature": "hot",
            "color": "#98cbff",
            "required_fields": ["amount", "contact", "company"],
            "on_missing_fields": "comment",
            "sla": {"within": "3d", "escalate_to": "mechanic"},
        },
        {
            "code": "WAIT",
            "name": _text("Ожидание", "Waiting"),
            "temperature": "cold",
            "color": "#f2f3f4",
            "required_fields": ["next_contact_at"],
            "on_missing_fields": "revert",
            "follow_up": {
                "field": "next_contact_at",
                "title": _text("Перезвонить", "Call back"),
                "assignee": "supervisor",
                "lead_time": "1h",
            },
        },
        {
            "code": "WON",
            "name": _text("Успех", "Won"),
            "semantics": "success",
            "temperature": "hot",
            "color": "#87f2c0",
        },
        {
            "code": "LOST",
            "name": _text("Отказ", "Lost"),
            "semantics": "failure",
            "temperature": "cold",
            "color": "#ff8f92",
            "required_fields": ["loss_reason"],
            "on_missing_fields": "revert",
        },
    ],
    "fields": [
        {"code": "budget", "name": _text("Бюджет", "Budget"), "type": "money"},
        {"code": "next_contact_at", "name": _text("Следующий контакт", "Next contact"), "type": "datetime"},
        {
            "code": "source",
            "name": _text("Источник", "Source"),
            "type": "enum",
            "options": [
                {"code": "ads", "name": _text("Реклама", "Ads")},
                {"code": "referral", "name": _text("Рекомендация", "Referral")},
            ],
        },
    ],
    "loss_reasons": [
        {"code": "price", "name": _text("Дорого", "Too expensive")},
        {"code": "spam", "name": _text("Спам", "Spam")},
    ],
    "roles": [{"code": "mechanic", "name": _text("Механик", "Mechanic")}],
}


def small_template(edit: TemplateEdit | None = None) -> FunnelTemplate:
    data = copy.deepcopy(SMALL)
    if edit is not None:
        edit(data)
    return FunnelTemplate.model_validate(data)


def stage_data(data: TemplateData, code: str) -> dict[str, Any]:
    return next(s for s in data["stages"] if s["code"] == code)
