"""Commands to push to a CRM, each with an idempotency key so nothing is done twice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class OutboxCommand(Base):
    __tablename__ = "outbox_commands"
    __table_args__ = (
        Index("ix_outbox_commands_due", "connection_id", "status", "next_attempt_at"),
        Index("ix_outbox_commands_deal_id", "deal_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    deal_id: Mapped[int | None] = mapped_column(ForeignKey("deals.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(32))  # move | task | comment | fields
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    # pending -> sending -> done; or failed (retry at next_attempt_at) -> ... -> dead (permanent, out of
    # attempts, or sent by a worker that died before recording the answer: see outbox.service)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    crm_result_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
