"""Reading the outbox for the API and the dashboard: commands, their connection, what they wait for.

Writing is elsewhere: app.outbox.enqueue (queue), app.outbox.delivery (send), app.outbox.retry
(send again by hand).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import Connection
from app.errors import NotFound
from app.outbox.models import OutboxCommand


class CommandNotFound(NotFound):
    pass


async def list_commands(
    session: AsyncSession,
    *,
    status: str | None = None,
    connection: str | None = None,
    deal_id: int | None = None,
    limit: int = 100,
) -> list[tuple[OutboxCommand, str]]:
    """Newest commands first, each with its connection's name, optionally filtered."""
    query = select(OutboxCommand, Connection.name).join(
        Connection, Connection.id == OutboxCommand.connection_id
    )
    if status is not None:
        query = query.where(OutboxCommand.status == status)
    if connection is not None:
        query = query.where(Connection.name == connection)
    if deal_id is not None:
        query = query.where(OutboxCommand.deal_id == deal_id)
    rows = await session.execute(query.order_by(OutboxCommand.id.desc()).limit(limit))
    return [(command, name) for command, name in rows]


async def command_with_connection(session: AsyncSession, command_id: int) -> tuple[OutboxCommand, str]:
    """One command and its connection's name."""
    row = (
        await session.execute(
            select(OutboxCommand, Connection.name)
            .join(Connection, Connection.id == OutboxCommand.connection_id)
            .where(OutboxCommand.id == command_id)
        )
    ).first()
    if row is None:
        raise CommandNotFound(f"no outbox command with id {command_id}")
    command, name = row
    return command, name


async def prerequisites(session: AsyncSession, command_ids: Sequence[int]) -> dict[int, int]:
    """Command id -> the command it waits for, for those of the given commands that wait for one."""
    if not command_ids:
        return {}
    rows = await session.execute(
        select(OutboxCommand.id, OutboxCommand.after_command_id).where(
            OutboxCommand.id.in_(list(command_ids)), OutboxCommand.after_command_id.is_not(None)
        )
    )
    return {command_id: after for command_id, after in rows if after is not None}
