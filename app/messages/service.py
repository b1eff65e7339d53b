"""Reading the message log (API, CLI, dashboard) and the filters they share."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import Connection
from app.deals.models import Deal
from app.funnels.models import Funnel
from app.library.service import template_for
from app.messages.models import Message
from app.messages.schemas import MessageOut
from app.messages.statuses import MESSAGE_CHANNELS, MessageStatus

STATUSES = tuple(s.value for s in MessageStatus)


class BadMessageFilter(ValueError):
    pass


@dataclass(frozen=True)
class MessageFilter:
    connection_id: int | None = None
    deal_id: int | None = None
    channel: str | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        if self.channel is not None and self.channel not in MESSAGE_CHANNELS:
            raise BadMessageFilter(
                f"unknown channel {self.channel!r}; channels are {', '.join(MESSAGE_CHANNELS)}"
            )
        if self.status is not None and self.status not in STATUSES:
            raise BadMessageFilter(f"unknown status {self.status!r}; statuses are {', '.join(STATUSES)}")

    def apply(
        self, query: Select[Message, Connection, str | None]
    ) -> Select[Message, Connection, str | None]:
        if self.connection_id is not None:
            query = query.where(Message.connection_id == self.connection_id)
        if self.deal_id is not None:
            query = query.where(Message.deal_id == self.deal_id)
        if self.channel is not None:
            query = query.where(Message.channel == self.channel)
        if self.status is not None:
            query = query.where(Message.status == self.status)
        return query


def _out(message: Message, connection: Connection, template_key: str | None) -> MessageOut:
    return MessageOut.model_validate(
        {
            **{
                c: getattr(message, c)
                for c in MessageOut.model_fields
                if c not in ("connection", "automation_name")
            },
            "connection": connection.name,
            "automation_name": _automation_name(connection, template_key, message.automation),
        }
    )


def _automation_name(
    connection: Connection, template_key: str | None, code: str | None
) -> dict[str, str] | None:
    template = template_for(connection, template_key) if template_key and code else None
    spec = next((a for a in template.automations if a.code == code), None) if template else None
    return {"ru": spec.name.ru, "en": spec.name.en} if spec else None


async def list_messages(
    session: AsyncSession, chosen: MessageFilter, *, offset: int = 0, limit: int = 100
) -> tuple[int, list[MessageOut]]:
    """(how many match, one page of them, newest first)."""
    base = chosen.apply(
        select(Message, Connection, Funnel.template_key)
        .join(Connection, Connection.id == Message.connection_id)
        .outerjoin(Deal, Deal.id == Message.deal_id)
        .outerjoin(Funnel, Funnel.id == Deal.funnel_id)
    )
    total = await session.scalar(select(func.count()).select_from(base.subquery()))
    rows = await session.execute(base.order_by(Message.id.desc()).offset(offset).limit(limit))
    return int(total or 0), [_out(message, record, key) for message, record, key in rows.all()]


async def counts(session: AsyncSession, connection_id: int | None = None) -> dict[tuple[str, str], int]:
    """(channel or "—", status) -> how many messages."""
    query = select(Message.channel, Message.status, func.count(Message.id)).group_by(
        Message.channel, Message.status
    )
    if connection_id is not None:
        query = query.where(Message.connection_id == connection_id)
    return {
        (channel or "—", str(status)): int(n) for channel, status, n in (await session.execute(query)).all()
    }


async def deal_messages(session: AsyncSession, deal_id: int) -> list[MessageOut]:
    """Every message of a deal, newest first (the deal page's partial)."""
    _total, items = await list_messages(session, MessageFilter(deal_id=deal_id), limit=500)
    return items
