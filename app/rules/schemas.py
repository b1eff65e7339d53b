"""API shapes for the rules: a move request, its answer, and a deal past its stage's SLA."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field


class MoveRequest(BaseModel):
    stage: str = Field(description="Template stage code, e.g. QUALIFIED")


class MoveAccepted(BaseModel):
    command_id: int
    created: bool  # False: this Idempotency-Key was queued before


class SlaBreachOut(BaseModel):
    deal_id: int
    crm_deal_id: str
    connection_id: int
    funnel: str
    stage: str
    entered_at: datetime
    deadline: datetime
    overdue_by: timedelta
    escalated: bool
