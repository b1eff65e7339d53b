"""Deal API shapes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel


class DealOut(BaseModel):
    id: int
    connection: str
    crm_deal_id: str
    funnel: str | None
    stage: str | None
    crm_pipeline_id: str
    crm_stage_id: str
    managed: bool
    title: str
    amount: Decimal | None
    currency: str | None
    responsible_id: str | None
    crm_updated_at: datetime
    stage_entered_at: datetime | None
    deleted: bool


class TransitionOut(BaseModel):
    from_crm_stage_id: str | None
    to_crm_stage_id: str
    from_stage: str | None
    to_stage: str | None
    at: datetime
    source: str


class DealCommandOut(BaseModel):
    """What FunnelSync asked the CRM to do for this deal, and how it went."""

    id: int
    kind: str
    status: str
    attempts: int
    last_error: str | None
    crm_result_id: str | None
    created_at: datetime
    done_at: datetime | None


class DealDetail(DealOut):
    fields: dict[str, Any]
    history: list[TransitionOut]
    commands: list[DealCommandOut]


class DealPage(BaseModel):
    total: int
    items: list[DealOut]
