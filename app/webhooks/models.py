"""Raw webhook deliveries, committed before the CRM gets its 2xx."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, EnumString, UTCDateTime, utcnow


class EventStatus(StrEnum):
    """Where a received webhook delivery stands: pending until the processor has mirrored its deals,
    then processed, or failed (kept with its error, retried by hand)."""

    PENDING = "pending"
    PROCESSED = "processed"
    FAILED = "failed"


class InboxEvent(Base):
    __tablename__ = "inbox_events"
    __table_args__ = (
        UniqueConstraint("connection_id", "dedupe_key"),
        Index("ix_inbox_events_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    dedupe_key: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(128), default="")
    body: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[EventStatus] = mapped_column(EnumString(EventStatus, 16), default=EventStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Events whose deals we already fetched and mirrored in this body (several per amoCRM POST).
    deals: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
