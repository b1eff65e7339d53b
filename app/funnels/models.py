"""A funnel is a template provisioned into one connection; stages map template codes to CRM ids."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class Funnel(Base):
    __tablename__ = "funnels"
    __table_args__ = (UniqueConstraint("connection_id", "template_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    template_key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    crm_pipeline_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # FunnelSync created the pipeline; until provisioned_at is set its default stages are ours.
    created_pipeline: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    provisioned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FunnelStage(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("funnel_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    funnel_id: Mapped[int] = mapped_column(ForeignKey("funnels.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    sort: Mapped[int] = mapped_column(Integer)
    semantics: Mapped[str] = mapped_column(String(16))  # process | success | failure
    crm_stage_id: Mapped[str | None] = mapped_column(String(64), index=True)


class FunnelMapping(Base):
    """Template code -> CRM id for the things a funnel provisions besides stages (fields, loss
    reasons). Recorded right after each CRM write so a failed run can be completed without
    duplicates."""

    __tablename__ = "funnel_mappings"
    __table_args__ = (UniqueConstraint("funnel_id", "kind", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    funnel_id: Mapped[int] = mapped_column(ForeignKey("funnels.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # field | loss_reason | field_option
    code: Mapped[str] = mapped_column(String(255))
    crm_id: Mapped[str] = mapped_column(String(64))
    # How deal snapshots name the thing, when that differs from its id (Bitrix24 "UF_CRM_...").
    crm_name: Mapped[str | None] = mapped_column(String(64), default=None)
