"""In-memory portal state: what a new Bitrix24 portal has, plus JSON persistence."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from connectors.bitrix24.sandbox.config import SandboxConfig

# The default deal stages of a portal, verbatim from the crm.status.list example in the official
# docs (b24restdocs api-reference/crm/status/crm-status-list.md): code, name, sort, colour,
# SEMANTICS, EXTRA.SEMANTICS, SYSTEM. Verified. A new category gets the same set prefixed `C{id}:`
# (real portal data in fast_bitrix24 tests/real_responses/crm_dealcategory_stage_list.py).
DEFAULT_STAGES: tuple[tuple[str, str, int, str, str | None, str, str], ...] = (
    ("NEW", "New", 10, "#39A8EF", None, "process", "Y"),
    ("PREPARATION", "Document preparation", 20, "#2FC6F6", None, "process", "N"),
    ("PREPAYMENT_INVOICE", "Prepayment invoice", 30, "#55D0E0", None, "process", "N"),
    ("EXECUTING", "In progress", 40, "#47E4C2", None, "process", "N"),
    ("FINAL_INVOICE", "Final invoice", 50, "#FFA900", None, "process", "N"),
    ("WON", "Deal successful", 60, "#7BD500", "S", "success", "Y"),
    ("LOSE", "Deal failed", 70, "#FF5752", "F", "failure", "Y"),
    ("APOLOGY", "Failure reason analysis", 80, "#FF5752", "F", "apology", "N"),
)


def entity_id_for(category_id: int) -> str:
    return "DEAL_STAGE" if category_id == 0 else f"DEAL_STAGE_{category_id}"


def stage_prefix(category_id: int) -> str:
    return "" if category_id == 0 else f"C{category_id}:"


@dataclass
class PortalState:
    categories: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[int, dict[str, Any]] = field(default_factory=dict)
    deals: dict[int, dict[str, Any]] = field(default_factory=dict)
    userfields: dict[int, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    handlers: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    # Per-deal rights: user id -> ids of deals that user may see but not change (a deal outside the
    # user's department, say). Everything else is allowed, like an administrator's webhook.
    edit_denied: dict[int, set[int]] = field(default_factory=dict)
    contacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    # deal id -> its contact bindings [{CONTACT_ID, SORT, ROLE_ID, IS_PRIMARY}] (sandbox/contacts.py)
    deal_contacts: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def next_id(self, kind: str, start: int = 1) -> int:
        value = self.counters.get(kind, start - 1) + 1
        self.counters[kind] = value
        return value

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def fresh(cls) -> PortalState:
        state = cls()
        state.counters["status"] = 100  # row ids of a real portal are not small; keep them realistic
        state.categories[0] = {
            "id": 0,
            "name": "General",
            "sort": 300,
            "entityTypeId": 2,
            "isDefault": "Y",
            "originId": "",
            "originatorId": "",
        }
        state.add_default_stages(0)
        return state

    def add_default_stages(self, category_id: int) -> None:
        prefix = stage_prefix(category_id)
        for code, name, sort, color, semantics, extra, system in DEFAULT_STAGES:
            row_id = self.next_id("status")
            self.statuses[row_id] = {
                "ID": row_id,
                "ENTITY_ID": entity_id_for(category_id),
                "STATUS_ID": prefix + code,
                "NAME": name,
                "NAME_INIT": name if system == "Y" else "",
                "SORT": sort,
                "SYSTEM": system,
                "CATEGORY_ID": None if category_id == 0 else category_id,
                "COLOR": color,
                "SEMANTICS": semantics,
                "EXTRA_SEMANTICS": extra,
            }

    # --- queries -----------------------------------------------------------------------------------

    def stages_of(self, category_id: int) -> list[dict[str, Any]]:
        entity = entity_id_for(category_id)
        rows = [s for s in self.statuses.values() if s["ENTITY_ID"] == entity]
        return sorted(rows, key=lambda s: (int(s["SORT"]), int(s["ID"])))

    def category_of_entity(self, entity_id: str) -> int | None:
        if entity_id == "DEAL_STAGE":
            return 0
        if entity_id.startswith("DEAL_STAGE_") and entity_id[11:].isdigit():
            category_id = int(entity_id[11:])
            return category_id if category_id in self.categories else None
        return None

    def stage(self, category_id: int, stage_id: str) -> dict[str, Any] | None:
        for row in self.stages_of(category_id):
            if row["STATUS_ID"] == stage_id:
                return row
        return None

    def may_edit(self, user_id: int, deal_id: int) -> bool:
        return deal_id not in self.edit_denied.get(user_id, set())

    # --- persistence -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories.values()),
            "statuses": list(self.statuses.values()),
            "deals": list(self.deals.values()),
            "userfields": list(self.userfields.values()),
            "tasks": list(self.tasks.values()),
            "comments": list(self.comments.values()),
            "handlers": self.handlers,
            "counters": self.counters,
            "edit_denied": {str(u): sorted(ids) for u, ids in self.edit_denied.items()},
            "contacts": list(self.contacts.values()),
            "deal_contacts": {str(d): rows for d, rows in self.deal_contacts.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortalState:
        state = cls()
        state.categories = {int(c["id"]): c for c in data.get("categories", [])}
        for name in ("statuses", "deals", "userfields", "tasks", "comments", "contacts"):
            setattr(state, name, {int(row["ID"]): row for row in data.get(name, [])})
        state.handlers = list(data.get("handlers", []))
        state.counters = {k: int(v) for k, v in data.get("counters", {}).items()}
        state.edit_denied = {int(u): {int(i) for i in ids} for u, ids in data.get("edit_denied", {}).items()}
        state.deal_contacts = {int(d): list(rows) for d, rows in data.get("deal_contacts", {}).items()}
        return state

    @classmethod
    def load_or_fresh(cls, config: SandboxConfig) -> PortalState:
        if config.state_file and Path(config.state_file).exists():
            return cls.from_json(json.loads(Path(config.state_file).read_text("utf-8")))
        return cls.fresh()

    def save(self, config: SandboxConfig) -> None:
        if not config.state_file:
            return
        path = Path(config.state_file)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False), "utf-8")
        tmp.replace(path)


class PortalClock:
    """Portal-local timestamps (`2024-08-30T14:29:00+02:00`, the API's date format)."""

    def __init__(self, tz_offset: str) -> None:
        sign = -1 if tz_offset.startswith("-") else 1
        hours, minutes = tz_offset.lstrip("+-").split(":")
        self.tzinfo = timezone(timedelta(hours=int(hours), minutes=int(minutes)) * sign)
        # Seconds the portal's clock is ahead of real time (POST /_sandbox/clock): lets a test make
        # "a minute later" happen without sleeping, since DATE_MODIFY has one-second resolution.
        self.offset = 0.0

    def now(self) -> str:
        return self.format(time.time() + self.offset)

    def format(self, ts: float) -> str:
        return datetime.fromtimestamp(int(ts), self.tzinfo).isoformat()

    def parse(self, value: Any) -> datetime | None:
        try:
            parsed = datetime.fromisoformat(str(value).strip().replace(" ", "T"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=self.tzinfo)
