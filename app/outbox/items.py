"""A command as the connector's item, and the connector call that carries each kind."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from app.outbox.models import OutboxCommand
from connectors.base import (
    CRMConnector,
    FieldUpdate,
    ItemResult,
    NewComment,
    NewDeal,
    NewTask,
    StageMove,
    TaskDeadline,
)

# Sending these twice changes nothing in the CRM (a stage, a field value, a deadline set again).
IDEMPOTENT_KINDS = frozenset({"move", "task_due", "fields"})


def marker(command_id: int) -> str:
    """Written into every task and comment we create, so that after a crash we can tell whether
    the CRM got it (see app.outbox.recovery). Short, and unlikely to occur by accident."""
    return f"[fs:{command_id}]"


def _with_marker(text: str, command_id: int) -> str:
    return f"{text}\n{marker(command_id)}" if text else marker(command_id)


def to_item(command: OutboxCommand) -> Any:
    if command.kind == "deal":  # the only kind that does not act on an existing deal
        return _new_deal(command)
    ref, p = str(command.id), command.payload
    crm_deal_id = str(p["crm_deal_id"])
    if command.kind == "move":
        return StageMove(ref, crm_deal_id, str(p["pipeline_id"]), str(p["stage_id"]))
    if command.kind == "task":
        return NewTask(
            ref,
            crm_deal_id,
            p["title"],
            datetime.fromisoformat(p["due_at"]),
            p.get("responsible_id"),
            _with_marker(p.get("description", ""), command.id),
        )
    if command.kind == "task_due":
        return TaskDeadline(ref, str(p["task_id"]), datetime.fromisoformat(p["due_at"]))
    if command.kind == "comment":
        return NewComment(ref, crm_deal_id, _with_marker(p["text"], command.id))
    return FieldUpdate(
        ref,
        crm_deal_id,
        p["values"],
        amount=_decimal(p.get("amount")),
        loss_reason_id=str(p["loss_reason_id"]) if p.get("loss_reason_id") else None,
    )


def _decimal(value: Any) -> Decimal | None:
    """Amounts travel in payloads as strings: JSON numbers would round them through a float."""
    return None if value is None else Decimal(str(value))


def _new_deal(command: OutboxCommand) -> NewDeal:
    p = command.payload
    return NewDeal(
        str(command.id),
        str(p["pipeline_id"]),
        str(p["stage_id"]),
        str(p["title"]),
        dict(p.get("fields") or {}),
        p.get("responsible_id"),
        tuple(str(c) for c in p.get("contact_ids") or ()),
        marker=marker(command.id),
        amount=_decimal(p.get("amount")),
    )


async def send(connector: CRMConnector, kind: str, items: Sequence[Any]) -> list[ItemResult]:
    if kind == "deal":
        return await connector.create_deals(items)
    if kind == "move":
        return await connector.move_deals(items)
    if kind == "task":
        return await connector.create_tasks(items)
    if kind == "task_due":
        return await connector.move_task_deadlines(items)
    if kind == "comment":
        return await connector.add_comments(items)
    return await connector.update_deal_fields(items)
