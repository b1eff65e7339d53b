"""Queue a message: the entry points the automation runner calls inside its own transaction.

Nothing here calls a CRM or a provider. A notify message keeps the action (its channels and its
localized texts) in `payload`; the channel, the recipient and the rendered text are chosen at
delivery, when the deal's contacts are known (they may not be cached yet when the trigger fires).
Queueing the same key twice is a no-op, so re-evaluating a trigger never sends a second message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import dialect_insert
from app.messages.models import Message
from app.messages.statuses import MessageStatus
from funnel_templates.basics import LocalizedText

NOTIFY = "notify"
WEBHOOK = "webhook"
CLIENT_CHANNELS = ("telegram", "sms", "email")

Localized = LocalizedText | Mapping[str, str]


def _localized(text: Localized) -> dict[str, str]:
    """{"ru": ..., "en": ...} from a template's LocalizedText or a plain mapping."""
    values = text.model_dump() if isinstance(text, LocalizedText) else dict(text)
    if not values.get("ru") or not values.get("en"):
        raise ValueError(f"a message text needs both 'ru' and 'en': {values!r}")
    return {"ru": values["ru"], "en": values["en"]}


async def _insert(session: AsyncSession, values: dict[str, Any]) -> bool:
    result = await session.execute(
        dialect_insert(session, Message)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _common(
    connection_id: int, deal_id: int | None, automation: str | None, key: str, now: datetime
) -> dict[str, Any]:
    return {
        "connection_id": connection_id,
        "deal_id": deal_id,
        "automation": automation,
        "idempotency_key": key,
        "status": MessageStatus.QUEUED,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "text": "",
    }


async def enqueue_notify(
    session: AsyncSession,
    *,
    connection_id: int,
    deal_id: int | None,
    automation: str | None,
    key: str,
    channels: Sequence[str],
    message: Localized,
    subject: Localized | None,
    now: datetime,
) -> bool:
    """Queue a message to the deal's client on the first of `channels` it can be reached on; True
    when it was new. `message`/`subject` are the action's texts in both languages (placeholders
    unrendered); the connection's language picks one at delivery."""
    unknown = [channel for channel in channels if channel not in CLIENT_CHANNELS]
    if not channels or unknown:
        raise ValueError(
            f"notify channels must be some of {', '.join(CLIENT_CHANNELS)}; got {list(channels)}"
        )
    if "email" in channels and subject is None:
        raise ValueError("a notify action with the email channel needs a subject")
    payload = {
        "kind": NOTIFY,
        "channels": list(channels),
        "message": _localized(message),
        "subject": _localized(subject) if subject is not None else None,
    }
    return await _insert(
        session, {**_common(connection_id, deal_id, automation, key, now), "payload": payload}
    )


async def enqueue_webhook(
    session: AsyncSession,
    *,
    connection_id: int,
    deal_id: int | None,
    automation: str | None,
    key: str,
    event: str,
    data: Mapping[str, Any],
    now: datetime,
) -> bool:
    """Queue an outgoing webhook call (`event` and `data`, JSON-serialisable) to the connection's
    webhook account; True when it was new. The call carries the message's key as its id, so a
    receiver drops a repeat."""
    if not event:
        raise ValueError("a webhook needs an event name")
    payload = {"kind": WEBHOOK, "event": event, "data": dict(data)}
    values = {**_common(connection_id, deal_id, automation, key, now), "channel": WEBHOOK, "payload": payload}
    return await _insert(session, values)
