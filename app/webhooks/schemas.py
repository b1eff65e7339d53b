"""Inbox event API shapes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from app.webhooks.models import EventStatus


class InboxEventOut(BaseModel):
    id: int
    connection: str
    status: EventStatus
    error: str | None
    attempts: int
    deals: int
    received_at: datetime
    processed_at: datetime | None
    content_type: str
    body_preview: str


class EventRetry(BaseModel):
    """Failed events to queue again: all of them, one connection's, and/or the listed ids."""

    model_config = ConfigDict(extra="forbid")

    connection: str | None = None
    ids: list[int] | None = None


class EventRetryResult(BaseModel):
    retried: int
