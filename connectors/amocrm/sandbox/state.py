"""In-memory state of one simulated amoCRM account (optionally persisted to a JSON file).

Entities are kept as plain dicts in the API's own shape, so persistence is a json.dump and
responses are copies. A new account looks like a real new one: one main pipeline "Воронка" with the
system stages (unsorted type 1, 142 won, 143 lost) and the default working stages, two users, the
predefined tracking fields on leads, no loss reasons, no webhooks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.amocrm.sandbox.config import SandboxConfig

WON, LOST = 142, 143
# Palette accepted for stages — PHPLIB StatusModel::COLORS, same list on Kommo's stage-colors page.
COLORS = [
    "#fffeb2",
    "#fffd7f",
    "#fff000",
    "#ffeab2",
    "#ffdc7f",
    "#ffce5a",
    "#ffdbdb",
    "#ffc8c8",
    "#ff8f92",
    "#d6eaff",
    "#c1e0ff",
    "#98cbff",
    "#ebffb1",
    "#deff81",
    "#87f2c0",
    "#f9deff",
    "#f3beff",
    "#ccc8f9",
    "#eb93ff",
    "#f2f3f4",
    "#e6e8ea",
]
MAX_PIPELINES = 50
MAX_STATUSES = 100  # per pipeline, system ones included
ADMIN_ID, MANAGER_ID = 8_000_001, 8_000_002
FIELD_TYPES = [
    "text",
    "numeric",
    "checkbox",
    "select",
    "multiselect",
    "multitext",
    "date",
    "url",
    "textarea",
    "radiobutton",
    "streetaddress",
    "smart_address",
    "birthday",
    "legal_entity",
    "date_time",
    "items",
    "category",
    "price",
    "tracking_data",
    "linked_entity",
    "org_legal_name",
    "monetary",
    "chained_list",
    "file",
    "payer",
    "supplier",
]
ENUM_TYPES = ("select", "multiselect", "radiobutton")
WEBHOOK_EVENTS = [
    "add_lead",
    "update_lead",
    "delete_lead",
    "restore_lead",
    "status_lead",
    "responsible_lead",
    "note_lead",
    "add_contact",
    "update_contact",
    "delete_contact",
    "restore_contact",
    "responsible_contact",
    "note_contact",
    "add_company",
    "update_company",
    "delete_company",
    "restore_company",
    "responsible_company",
    "note_company",
    "add_task",
    "update_task",
    "delete_task",
    "responsible_task",
    "add_unsorted",
    "update_unsorted",
    "delete_unsorted",
]
_TRACKING_FIELDS = [
    "utm_content",
    "utm_medium",
    "utm_campaign",
    "utm_source",
    "utm_term",
    "utm_referrer",
    "referrer",
    "roistat",
    "openstat_service",
    "openstat_campaign",
    "openstat_ad",
    "openstat_source",
    "from",
    "gclientid",
    "_ym_uid",
    "_ym_counter",
    "gclid",
    "yclid",
    "fbclid",
]


def _system_statuses(pipeline_id: int, account_id: int, unsorted_id: int) -> list[dict[str, Any]]:
    def status(sid: int, name: str, sort: int, color: str, editable: bool, type_: int) -> dict[str, Any]:
        return {
            "id": sid,
            "name": name,
            "sort": sort,
            "is_editable": editable,
            "pipeline_id": pipeline_id,
            "color": color,
            "type": type_,
            "account_id": account_id,
            "descriptions": [],
        }

    return [
        status(unsorted_id, "Неразобранное", 10, "#c1c1c1", False, 1),
        status(WON, "Успешно реализовано", 10000, "#CCFF66", False, 0),
        status(LOST, "Закрыто и не реализовано", 11000, "#D5D8DB", False, 0),
    ]


@dataclass
class Token:
    access_token: str
    refresh_token: str | None
    expires_at: float  # sandbox clock
    integration: str
    user_id: int = ADMIN_ID


@dataclass
class SandboxState:
    config: SandboxConfig
    data: dict[str, Any] = field(default_factory=dict)
    started_real: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.config.state_file and Path(self.config.state_file).exists():
            self.data = json.loads(Path(self.config.state_file).read_text(encoding="utf-8"))
        else:
            self.data = self._new_account()

    # --- clock -----------------------------------------------------------------------------------

    def clock(self) -> float:
        """Sandbox time in seconds: real time run `speed` times faster since start."""
        return self.started_real + (time.time() - self.started_real) * self.config.speed

    def now(self) -> int:
        """Unix timestamp for payloads: real time (stays comparable with the caller's clock)."""
        return int(time.time())

    def next_id(self, kind: str) -> int:
        value: int = self.data["ids"][kind]
        self.data["ids"][kind] = value + 1
        return value

    # --- account ---------------------------------------------------------------------------------

    def _new_account(self) -> dict[str, Any]:
        cfg = self.config
        self.data = {
            "ids": {
                "pipeline": 7_000_001,
                "status": 60_000_001,
                "lead": 20_000_001,
                "field": 900_001,
                "enum": 500_001,
                "loss_reason": 40_000_001,
                "task": 30_000_001,
                "note": 50_000_001,
                "webhook": 839_001,
            },
            "created_at": self.now(),
            "users": [
                {"id": ADMIN_ID, "name": "Администратор", "is_admin": True},
                {"id": MANAGER_ID, "name": "Менеджер", "is_admin": False},
            ],
            "pipelines": [],
            "leads": {},
            "custom_fields": [],
            "loss_reasons": [],
            "tasks": [],
            "notes": [],
            "webhooks": [],
            "tokens": [],
            "codes": {},
        }
        main = self.add_pipeline("Воронка", 1, True, True)
        for sort, (name, color) in enumerate(
            [
                ("Первичный контакт", "#99ccff"),
                ("Переговоры", "#ffff99"),
                ("Принимают решение", "#ffcc66"),
                ("Согласование договора", "#ffcccc"),
            ],
            start=2,
        ):
            self.add_status(main, name, sort * 10, color)
        for index, name in enumerate(_TRACKING_FIELDS):
            self.data["custom_fields"].append(
                self.new_field(
                    {"name": name, "type": "tracking_data", "code": name.upper(), "sort": 700 + index},
                    predefined=True,
                )
            )
        del cfg
        return self.data

    @property
    def pipelines(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.data["pipelines"]
        return result

    @property
    def leads(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = self.data["leads"]
        return result

    def user_ids(self) -> set[int]:
        return {u["id"] for u in self.data["users"]}

    def pipeline(self, pipeline_id: Any) -> dict[str, Any] | None:
        return next((p for p in self.pipelines if p["id"] == pipeline_id), None)

    def status(self, pipeline: dict[str, Any], status_id: Any) -> dict[str, Any] | None:
        return next((s for s in pipeline["_embedded"]["statuses"] if s["id"] == status_id), None)

    def add_pipeline(self, name: str, sort: int, is_main: bool, unsorted_on: bool) -> dict[str, Any]:
        pid = self.next_id("pipeline")
        pipeline = {
            "id": pid,
            "name": name,
            "sort": sort,
            "is_main": is_main,
            "is_unsorted_on": unsorted_on,
            "is_archive": False,
            "account_id": self.config.account_id,
            "_embedded": {"statuses": _system_statuses(pid, self.config.account_id, self.next_id("status"))},
        }
        self.pipelines.append(pipeline)
        return pipeline

    def add_status(self, pipeline: dict[str, Any], name: str, sort: int, color: str) -> dict[str, Any]:
        status = {
            "id": self.next_id("status"),
            "name": name,
            "sort": sort,
            "is_editable": True,
            "pipeline_id": pipeline["id"],
            "color": color,
            "type": 0,
            "account_id": self.config.account_id,
            "descriptions": [],
        }
        pipeline["_embedded"]["statuses"].append(status)
        pipeline["_embedded"]["statuses"].sort(key=lambda s: s["sort"])
        return status

    def first_working_status(self, pipeline: dict[str, Any]) -> dict[str, Any] | None:
        """Where deleted-stage leads go and where new leads start: the first non-system stage."""
        regular = [
            s for s in pipeline["_embedded"]["statuses"] if s["type"] == 0 and s["id"] not in (WON, LOST)
        ]
        return min(regular, key=lambda s: s["sort"]) if regular else None

    def new_field(self, item: dict[str, Any], predefined: bool = False) -> dict[str, Any]:
        fid = self.next_id("field")
        enums = None
        if item.get("enums"):
            enums = [
                {
                    "id": self.next_id("enum"),
                    "value": str(e.get("value")),
                    "sort": int(e.get("sort") or (i + 1) * 10),
                }
                for i, e in enumerate(item["enums"])
            ]
        return {
            "id": fid,
            "name": item["name"],
            "type": item["type"],
            "account_id": self.config.account_id,
            "code": item.get("code"),
            "sort": int(item.get("sort") or 500),
            "is_api_only": bool(item.get("is_api_only", False)),
            "enums": enums,
            "group_id": None,
            "required_statuses": list(item.get("required_statuses") or []),
            "is_deletable": not predefined,
            "is_predefined": predefined,
            "entity_type": "leads",
            "remind": None,
            "settings": None,
            "hidden_statuses": [],
            "chained_lists": None,
        }

    def field_by_id(self, field_id: Any) -> dict[str, Any] | None:
        return next((f for f in self.data["custom_fields"] if f["id"] == field_id), None)

    def new_lead(self, name: str, pipeline_id: int, status_id: int, user_id: int) -> dict[str, Any]:
        lid = self.next_id("lead")
        now = self.now()
        lead = {
            "id": lid,
            "name": name,
            "price": 0,
            "responsible_user_id": user_id,
            "group_id": 0,
            "status_id": status_id,
            "pipeline_id": pipeline_id,
            "loss_reason_id": None,
            "created_by": user_id,
            "updated_by": user_id,
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
            "closest_task_at": None,
            "is_deleted": False,
            "custom_fields_values": None,
            "score": None,
            "account_id": self.config.account_id,
            "labor_cost": None,
        }
        self.leads[str(lid)] = lead
        return lead

    def touch(self, lead: dict[str, Any], user_id: int) -> None:
        # Modify times stay strictly increasing per lead so two changes within one second stay
        # distinguishable (the real CRM has 1 s resolution; people rarely edit a lead twice a second).
        lead["updated_at"] = max(self.now(), int(lead["updated_at"]) + 1)
        lead["updated_by"] = user_id
        closed = lead["status_id"] in (WON, LOST)
        if closed and not lead["closed_at"]:
            lead["closed_at"] = lead["updated_at"]
        elif not closed:
            lead["closed_at"] = None

    # --- tokens ----------------------------------------------------------------------------------

    def tokens(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.data["tokens"]
        return result

    def save(self) -> None:
        if self.config.state_file:
            path = Path(self.config.state_file)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(self.data, ensure_ascii=False), encoding="utf-8")
            tmp.replace(path)
