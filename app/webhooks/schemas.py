"""Inbox event API shape."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class InboxEventOut(BaseModel):
    id: int
    connection: str
    status: str
    error: str | None
    attempts: int
    deals: int
    received_at: datetime
    processed_at: datetime | None
    content_type: str
    body_preview: str
