"""/api/outbox: see what was pushed, what failed and why; retry one or many."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from app.api.deps import SessionsDep
from app.connections import service as connections
from app.outbox import history as outbox_history
from app.outbox import retry, service
from app.outbox.models import OutboxCommand
from app.outbox.schemas import AttemptOut, BulkRetry, BulkRetryResult, CommandDetail, CommandOut
from app.outbox.statuses import CommandStatus

router = APIRouter(prefix="/outbox", tags=["outbox"])


def command_out(command: OutboxCommand, connection: str) -> CommandOut:
    return CommandOut(
        id=command.id,
        connection=connection,
        deal_id=command.deal_id,
        kind=command.kind,
        payload=dict(command.payload),
        status=command.status,
        attempts=command.attempts,
        next_attempt_at=command.next_attempt_at,
        last_error=command.last_error,
        crm_result_id=command.crm_result_id,
        created_at=command.created_at,
        done_at=command.done_at,
        after_command_id=command.after_command_id,
    )


@router.get("")
async def list_commands(
    sessions: SessionsDep,
    status_: Annotated[CommandStatus | None, Query(alias="status")] = None,
    connection: str | None = None,
    deal_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CommandOut]:
    async with sessions() as session:
        rows = await service.list_commands(
            session, status=status_, connection=connection, deal_id=deal_id, limit=limit
        )
        return [command_out(c, name) for c, name in rows]


@router.get("/{command_id}")
async def get_command(command_id: int, sessions: SessionsDep) -> CommandDetail:
    """One command with its whole history: every request that carried it and what came back, and
    when it was blocked, found in the CRM or retried by hand (manual retries keep it)."""
    async with sessions() as session:
        command, name = await service.command_with_connection(session, command_id)
        history = (await outbox_history.attempt_history(session, [command.id])).get(command.id, [])
    return CommandDetail(
        **command_out(command, name).model_dump(),
        history=[AttemptOut.model_validate(a) for a in history],
    )


@router.post("/retry")
async def retry_many(body: BulkRetry, sessions: SessionsDep) -> BulkRetryResult:
    async with sessions.begin() as session:
        connection_id = None
        if body.connection is not None:
            connection_id = (await connections.get_connection(session, body.connection)).id
        count = await retry.retry_matching(
            session, status=body.status, connection_id=connection_id, kind=body.kind, ids=body.ids
        )
    return BulkRetryResult(retried=count)


@router.post("/{command_id}/retry")
async def retry_one(command_id: int, sessions: SessionsDep) -> CommandOut:
    async with sessions.begin() as session:
        try:
            command = await retry.retry_command(session, command_id)
        except retry.CommandNotRetryable as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        command, name = await service.command_with_connection(session, command.id)
        return command_out(command, name)
