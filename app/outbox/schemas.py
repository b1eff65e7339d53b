"""Outbox API shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.outbox.statuses import AttemptOutcome, CommandKind, CommandStatus


class CommandOut(BaseModel):
    id: int
    connection: str
    deal_id: int | None
    kind: str
    payload: dict[str, Any]
    status: CommandStatus
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    crm_result_id: str | None
    created_at: datetime
    done_at: datetime | None
    after_command_id: int | None  # sent only once this command is done


class AttemptOut(BaseModel):
    """One entry of a command's history (see app.outbox.models.OutboxAttempt)."""

    model_config = ConfigDict(from_attributes=True)

    attempt: int | None  # which request carried it, counted over its whole life; None: no request
    at: datetime
    outcome: AttemptOutcome
    error: str | None
    crm_code: str | None
    batch_size: int | None


class CommandDetail(CommandOut):
    history: list[AttemptOut]


class BulkRetry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["failed", "dead"] | None = None
    connection: str | None = None
    kind: CommandKind | None = None
    ids: list[int] | None = None


class BulkRetryResult(BaseModel):
    retried: int
