"""The local mirror of CRM deals and their stage history."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class Deal(Base):
    __tablename__ = "deals"
    __table_args__ = (
        UniqueConstraint("connection_id", "crm_deal_id"),
        # Covers the funnel board and analytics: counts, sums and overdue checks from the index.
        Index(
            "ix_deals_funnel_stage_entered",
            "funnel_id",
            "stage_id",
            "stage_entered_at",
            "deleted_at",
            "amount",
            "loss_reason",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    crm_deal_id: Mapped[str] = mapped_column(String(64))
    # Null funnel/stage: the deal is in a pipeline or stage FunnelSync does not manage.
    funnel_id: Mapped[int | None] = mapped_column(ForeignKey("funnels.id", ondelete="SET NULL"))
    stage_id: Mapped[int | None] = mapped_column(ForeignKey("stages.id", ondelete="SET NULL"))
    crm_pipeline_id: Mapped[str] = mapped_column(String(64))
    crm_stage_id: Mapped[str] = mapped_column(String(64))
    managed: Mapped[bool] = mapped_column(Boolean, default=False)
    title: Mapped[str] = mapped_column(String(512), default="")
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 2), default=None)
    currency: Mapped[str | None] = mapped_column(String(8), default=None)
    responsible_id: Mapped[str | None] = mapped_column(String(64), default=None)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Derived from `fields` by the mirror (app/deals/loss_reasons.py), for analytics' GROUP BY.
    loss_reason: Mapped[str | None] = mapped_column(String(255), default=None)
    # The CRM's modify time of the snapshot we hold: an older event never overwrites a newer one.
    crm_updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    crm_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    stage_entered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class StageTransition(Base):
    __tablename__ = "stage_transitions"
    __table_args__ = (
        # A deal's history; to_stage_id rides along for the analytics' won entries (index only).
        Index("ix_stage_transitions_deal_at", "deal_id", "at", "to_stage_id"),
        # Funnel analytics (app.analytics.transitions), both read from the index alone: entries into a
        # stage in a period, and exits from a stage whose entry was in the period.
        Index("ix_stage_transitions_to_stage_at", "to_stage_id", "at", "deal_id"),
        Index(
            "ix_stage_transitions_from_stage_entered",
            "from_stage_id",
            "from_stage_entered_at",
            "at",
            "to_stage_id",
            "deal_id",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id", ondelete="CASCADE"))
    from_crm_stage_id: Mapped[str | None] = mapped_column(String(64))
    to_crm_stage_id: Mapped[str] = mapped_column(String(64))
    from_stage_id: Mapped[int | None] = mapped_column(ForeignKey("stages.id", ondelete="SET NULL"))
    to_stage_id: Mapped[int | None] = mapped_column(ForeignKey("stages.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())  # the CRM's modify time
    # When the deal entered the stage it leaves here (its previous transition's `at`); None for the
    # transition that created the deal. Lets analytics pair an exit with its entry without a window.
    from_stage_entered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    source: Mapped[str] = mapped_column(String(16))  # webhook | reconcile | funnelsync
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SyncState(Base):
    """Per-connection reconciliation cursor: the newest CRM modify time fully committed locally."""

    __tablename__ = "sync_state"

    connection_id: Mapped[int] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    cursor: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_full_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    deals_seen: Mapped[int] = mapped_column(Integer, default=0)
