"""Commands to push to a CRM, each with an idempotency key so nothing is done twice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, EnumString, UTCDateTime, utcnow
from app.outbox.statuses import AttemptOutcome, CommandStatus, RuleName


class OutboxCommand(Base):
    __tablename__ = "outbox_commands"
    __table_args__ = (
        Index("ix_outbox_commands_due", "connection_id", "status", "next_attempt_at"),
        Index("ix_outbox_commands_deal_id", "deal_id"),
        Index("ix_outbox_commands_after_command_id", "after_command_id"),
        Index("ix_outbox_commands_stage_entry_id", "stage_entry_id"),
        Index("ix_outbox_commands_echo_transition_id", "echo_transition_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    deal_id: Mapped[int | None] = mapped_column(ForeignKey("deals.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(32))  # move | task | comment | fields
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[CommandStatus] = mapped_column(
        EnumString(CommandStatus, 16), default=CommandStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    crm_result_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The command this one must wait for: a comment that says a deal was moved is sent only once the
    # move is done, and not at all (dead, "not sent: ...") when the move failed. CASCADE: removing a
    # move removes what describes it, instead of freeing it to be sent about a move that never was.
    after_command_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbox_commands.id", ondelete="CASCADE"), default=None
    )
    # What the rules know about a command, as columns (issue #12): which rule queued it, and the
    # stage entry (transition) it belongs to. NULL for commands not queued by the rules or the move
    # API. SET NULL: a deleted transition leaves its commands, and their history, in place.
    rule: Mapped[RuleName | None] = mapped_column(EnumString(RuleName, 32), default=None)
    stage_entry_id: Mapped[int | None] = mapped_column(
        ForeignKey("stage_transitions.id", ondelete="SET NULL"), default=None
    )
    # For a move: the transition it came back from the CRM as (echo matching), so a later move by a
    # person to the same stage is not taken for it. Indexed so that deleting transitions (with
    # their deal) does not scan the outbox for each one.
    echo_transition_id: Mapped[int | None] = mapped_column(
        ForeignKey("stage_transitions.id", ondelete="SET NULL"), default=None
    )


class OutboxAttempt(Base):
    """What happened each time the worker dealt with a command: one row per request that carried it,
    plus the decisions that changed it without a request (blocked by its prerequisite, found in the
    CRM after an unanswered request, re-queued by hand). Append-only: a manual retry resets the
    command's scheduling (status, attempts budget) but never this history."""

    __tablename__ = "outbox_attempts"
    __table_args__ = (Index("ix_outbox_attempts_command_id", "command_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    command_id: Mapped[int] = mapped_column(ForeignKey("outbox_commands.id", ondelete="CASCADE"))
    # 1-based over the command's whole life (manual retries do not restart it); None for rows that
    # record no request (blocked, found, requeued).
    attempt: Mapped[int | None] = mapped_column(Integer, default=None)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    outcome: Mapped[AttemptOutcome] = mapped_column(EnumString(AttemptOutcome, 16))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    crm_code: Mapped[str | None] = mapped_column(String(64), default=None)
    batch_size: Mapped[int | None] = mapped_column(Integer, default=None)  # commands in that request
