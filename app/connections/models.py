"""A connection is one CRM account (a Bitrix24 portal or an amoCRM account) FunnelSync talks to."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, EnumString, UTCDateTime, utcnow


class ConnectionSwitch(StrEnum):
    """Whether FunnelSync talks to the account: paused after the CRM refused it (auth failed,
    account blocked) until someone resumes it. Stored in Connection.status; not the health state
    derived from recent calls (app/connections/health.py), nor the read model
    app.status.connection.ConnectionStatus."""

    ACTIVE = "active"
    PAUSED = "paused"


class Connection(Base):
    __tablename__ = "connections"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    crm: Mapped[str] = mapped_column(String(16))  # bitrix24 | amocrm
    base_url: Mapped[str] = mapped_column(String(512))
    # Fernet token of the JSON credentials (webhook URL, OAuth tokens, app token); never logged.
    credentials_encrypted: Mapped[str] = mapped_column(Text)
    # Non-secret settings: rate plan, supervisor user id, account identity (member_id, account id).
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # paused_reason says why it is paused, in plain words.
    status: Mapped[ConnectionSwitch] = mapped_column(
        EnumString(ConnectionSwitch, 16), default=ConnectionSwitch.ACTIVE
    )
    paused_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # Health facts, written where CRM calls happen (app/connections/health.py reads them into a
    # state): the last call the CRM answered, the last delivered push, and the failures since.
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_push_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The first failure after the last success (None: no failure since); the latest failure.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_failure: Mapped[str | None] = mapped_column(Text, default=None)
    last_failure_class: Mapped[str | None] = mapped_column(String(32), default=None)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
