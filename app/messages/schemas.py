"""API shapes of the message outbox, channel accounts, the messaging policy and opt-outs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    connection: str
    deal_id: int | None
    automation: str | None
    # The automation's name from the deal's template {"ru": ..., "en": ...}; None when the template
    # no longer declares it (the code is then all there is to show).
    automation_name: dict[str, str] | None = None
    channel: str | None
    recipient: str | None
    subject: str | None
    text: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    provider_id: str | None
    created_at: datetime
    sent_at: datetime | None


class MessagePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[MessageOut]


class AccountIn(BaseModel):
    """The channel's settings and its secrets (see connectors/channels/accounts.py per channel).
    Secrets left out of an update keep their stored values."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)


class AccountOut(BaseModel):
    channel: str
    config: dict[str, Any]
    secrets: dict[str, str]  # name -> "set": the values are never returned
    status: str
    paused_reason: str | None
    updated_at: datetime


class OptOutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str
    address: str = Field(min_length=1)


class OptOutOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    channel: str
    address: str
    source: str
    created_at: datetime
