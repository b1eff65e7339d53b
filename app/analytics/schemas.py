"""JSON shapes of the analytics API (the dashboard renders the same objects)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

from app.outbox.statuses import CommandStatus
from app.status.connection import ConnectionStatus


class StageInfo(BaseModel):
    """A funnel stage joined with what its template says about it."""

    id: int
    code: str
    sort: int
    name_ru: str
    name_en: str | None  # None when the funnel's template is no longer in the library
    semantics: str  # process | success | failure
    temperature: str | None  # cold | warm | hot
    color: str | None
    sla_seconds: float | None


class FunnelRef(BaseModel):
    id: int
    name: str
    template_key: str
    connection: str


class Period(BaseModel):
    start: datetime  # inclusive
    end: datetime  # exclusive


class StageConversion(BaseModel):
    """Entries into `stage` in the period and what came of them (definitions: app.analytics.flow).

    `to_next`: the deal's next stage change moved it forward to `next_stage` or beyond (skips count,
    failure stages never do); `to_won`: the deal is now in the success stage."""

    stage: str
    reached: int
    next_stage: str | None
    to_next: int
    to_next_pct: float | None
    to_won: int
    to_won_pct: float | None


class StageTime(BaseModel):
    """Median time from entering the stage (in the period) to the deal's next stage change; entries
    still waiting in the stage have no end yet and are not counted."""

    stage: str
    samples: int
    median_seconds: float | None


class LossReasonCount(BaseModel):
    value: str | None  # the raw CRM value; None when the deal carries no reason
    code: str | None  # the template's reason code when the value could be matched
    label_ru: str
    label_en: str
    deals: int


class TemperatureCount(BaseModel):
    temperature: str  # cold | warm | hot | unknown
    deals: int
    amount: Decimal


class FunnelAnalytics(BaseModel):
    funnel: FunnelRef
    period: Period
    stages: list[StageInfo]
    conversion: list[StageConversion]
    time_in_stage: list[StageTime]
    loss_reasons: list[LossReasonCount]
    lost_deals: int
    temperature: list[TemperatureCount]  # current state, not limited to the period


class BoardDeal(BaseModel):
    id: int
    crm_deal_id: str
    title: str
    amount: Decimal | None
    currency: str | None
    responsible_id: str | None
    stage_entered_at: datetime | None
    overdue: bool  # in the stage longer than the stage's SLA


class BoardColumn(BaseModel):
    stage: StageInfo
    deals: int
    amount: Decimal
    overdue: int
    items: list[BoardDeal]  # overdue first, then newest arrivals; one page of the stage


class Board(BaseModel):
    funnel: FunnelRef
    columns: list[BoardColumn]
    unknown_stage_deals: int  # managed deals in CRM stages the funnel does not map
    per_column_cap: int
    generated_at: datetime


class FunnelSummary(FunnelRef):
    deals: int


class ConnectionOverview(BaseModel):
    id: int
    health: ConnectionStatus
    outbox: dict[str, int]  # pending | failed | dead | done -> commands
    dead_letters: int
    funnels: list[FunnelSummary]


class Overview(BaseModel):
    connections: list[ConnectionOverview]
    generated_at: datetime


# The filter values of the failure lists: app.outbox.statuses.KINDS and RETRYABLE_STATUSES.
RetryableStatus = Literal["failed", "dead"]


class FailedEvent(BaseModel):
    id: int
    connection: str
    received_at: datetime
    attempts: int
    error: str | None
    body_preview: str


class FailedCommand(BaseModel):
    id: int
    connection: str
    deal_id: int | None
    kind: str
    status: CommandStatus
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime


class Failures(BaseModel):
    events: list[FailedEvent]
    commands: list[FailedCommand]
    limit: int


class DealCommand(BaseModel):
    id: int
    kind: str
    status: CommandStatus
    attempts: int
    last_error: str | None
    created_at: datetime
    done_at: datetime | None
