"""A bot conversation: one Telegram chat going through one template's qualification questions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class BotConversation(Base):
    __tablename__ = "bot_conversations"
    __table_args__ = (UniqueConstraint("connection_id", "template_key", "chat_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    template_key: Mapped[str] = mapped_column(String(128))
    chat_id: Mapped[str] = mapped_column(String(64))
    # app.automations.qualification.QualificationState.to_dict(); replaced on every answer.
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # None while asking; "qualified" / "rejected" once finished.
    outcome: Mapped[str | None] = mapped_column(String(16), default=None)
    # The outbox command that creates the deal (kind "deal"); its crm_result_id is the new deal.
    command_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbox_commands.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
