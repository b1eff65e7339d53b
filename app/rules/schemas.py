"""API shape of a deal past its stage's SLA."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel


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
