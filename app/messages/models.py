"""Message tables: channel accounts, the message outbox (which is also the message log), opt-outs and
the deal contacts cached with the mirror."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, EnumString, UTCDateTime, utcnow
from app.messages.statuses import ChannelAccountStatus, MessageStatus, OptOutSource


class ChannelAccount(Base):
    """One channel (email, telegram, sms, webhook) of one connection: how to reach the provider.
    `config` holds what is not secret (SMTP host, sender, the API's base URL, the webhook's URL);
    `secrets_encrypted` a Fernet token of the JSON secrets (SMTP password, bot token, api_id,
    webhook signing secret), like Connection.credentials_encrypted; never logged."""

    __tablename__ = "channel_accounts"
    __table_args__ = (UniqueConstraint("connection_id", "channel"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secrets_encrypted: Mapped[str] = mapped_column(Text)
    status: Mapped[ChannelAccountStatus] = mapped_column(
        EnumString(ChannelAccountStatus, 16), default=ChannelAccountStatus.ACTIVE
    )
    paused_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # Telegram long polling: the last update id handled, so a restarted bot does not answer twice.
    update_offset: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Message(Base):
    """One message to one client (or one outgoing webhook call), from one automation action.
    The idempotency key is the automation engine's key, so a message is queued once however many
    times its trigger is evaluated, and sent once (the status machine, as in the CRM outbox)."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_due", "connection_id", "status", "next_attempt_at"),
        Index("ix_messages_deal_id", "deal_id"),
        # "sent today to this recipient" (the daily limit)
        Index("ix_messages_recipient_sent", "connection_id", "recipient", "sent_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    deal_id: Mapped[int | None] = mapped_column(ForeignKey("deals.id", ondelete="SET NULL"))
    automation: Mapped[str | None] = mapped_column(String(64), default=None)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    # The channel and address chosen when the message was queued; None while none could be chosen
    # (status skipped says why).
    channel: Mapped[str | None] = mapped_column(String(16), default=None)
    recipient: Mapped[str | None] = mapped_column(String(255), default=None)
    subject: Mapped[str | None] = mapped_column(String(255), default=None)
    text: Mapped[str] = mapped_column(Text, default="")
    # The action: a webhook call's event and data, or a notify's channels and texts in both
    # languages (app.messages.enqueue); the channel, recipient and text are filled at delivery.
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    status: Mapped[MessageStatus] = mapped_column(EnumString(MessageStatus, 16), default=MessageStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    provider_id: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class OptOut(Base):
    """A client asked not to be messaged on a channel at an address (or cannot be reached there)."""

    __tablename__ = "opt_outs"
    __table_args__ = (UniqueConstraint("connection_id", "channel", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(255))  # normalised: see app.messages.addresses
    source: Mapped[OptOutSource] = mapped_column(EnumString(OptOutSource, 16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DealContacts(Base):
    """The contacts of a deal as the CRM gave them (connectors.base.ContactInfo as JSON, primary
    first), cached with the mirror so a reminder does not need a CRM call at send time."""

    __tablename__ = "deal_contacts"

    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id", ondelete="CASCADE"), primary_key=True)
    contacts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
