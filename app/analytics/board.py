"""The funnel board (deals per stage, SLA overdue first, one stage paged, narrowed to a responsible
user), the names of a deal's field values, and the commands issued for one deal."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.funnels import FunnelContext
from app.analytics.live_deals import stage_currency_totals
from app.analytics.loss_reasons import label_loss_reasons, option_ids_of
from app.analytics.schemas import Board, BoardColumn, BoardDeal, DealCommand, StageInfo
from app.db import utcnow
from app.deals.models import Deal
from app.funnels.models import FunnelMapping
from app.outbox.models import OutboxCommand
from funnel_templates.schema import LOSS_REASON_FIELD

PER_COLUMN_CAP = 25
# Both CRMs number their users (Bitrix24 user ID, amoCRM user id).
USER_ID_RE = re.compile(r"[0-9]{1,20}")
MAX_PAGE = 100_000


class BadBoardQuery(ValueError):
    """A board filter or page the funnel does not have; the message says what it takes."""


@dataclass(frozen=True)
class BoardQuery:
    """What the board shows: `stage` at `page` (every other stage at its first page), only the
    deals of `responsible` (a CRM user id) when set."""

    responsible: str | None = None
    stage: str | None = None
    page: int = 1

    def page_of(self, code: str) -> int:
        return self.page if code == self.stage else 1

    def url(self, funnel_id: int, stage: str | None = None, page: int | None = None) -> str:
        """The board with this filter, at `stage`'s `page` when given (page 1 needs no parameter)."""
        params = [("responsible", self.responsible), ("stage", stage if page and page > 1 else None)]
        params.append(("page", str(page) if page and page > 1 else None))
        query = urlencode([(k, v) for k, v in params if v])
        return f"/funnels/{funnel_id}" + (f"?{query}" if query else "")


def board_query(ctx: FunnelContext, stage: str = "", page: str = "", responsible: str = "") -> BoardQuery:
    """Read the query string ("" means not given); BadBoardQuery for an unknown stage, a page that
    is not a positive number, or a responsible id that is not a CRM user id."""
    codes = [s.code for s in ctx.stages]
    if stage and stage not in codes:
        raise BadBoardQuery(f"unknown stage {stage!r}; the funnel's stages: {', '.join(codes)}")
    number = 1
    if page:
        if not page.isdigit() or not 1 <= int(page) <= MAX_PAGE:
            raise BadBoardQuery(f"page must be a whole number from 1 to {MAX_PAGE}, got {page!r}")
        number = int(page)
    if page and not stage:
        raise BadBoardQuery("page needs the stage it pages: ?stage=<code>&page=<n>")
    if responsible and not USER_ID_RE.fullmatch(responsible):
        raise BadBoardQuery(f"responsible must be a CRM user id (digits), got {responsible!r}")
    return BoardQuery(responsible=responsible or None, stage=stage or None, page=number)


@dataclass(frozen=True)
class ColumnPage:
    """One column's paging and its amount per currency (sums in different currencies never add)."""

    page: int
    pages: int
    first: int  # 1-based position of the first deal shown (0: none shown)
    last: int
    amounts: list[tuple[str | None, Decimal]] = field(default_factory=list)


@dataclass(frozen=True)
class BoardView:
    board: Board
    query: BoardQuery
    columns: dict[str, ColumnPage]  # stage code -> its page
    responsibles: list[tuple[str, int]]  # CRM user id -> live deals in the funnel, by id
    loss_reasons: dict[int, tuple[str, str]]  # deal id -> (ru, en) name of its loss reason


def is_overdue(entered_at: datetime | None, sla_seconds: float | None, now: datetime) -> bool:
    if entered_at is None or sla_seconds is None:
        return False
    return now - entered_at > timedelta(seconds=sla_seconds)


def _live(ctx: FunnelContext, responsible: str | None) -> list[ColumnElement[bool]]:
    where = [Deal.funnel_id == ctx.ref.id, Deal.deleted_at.is_(None)]
    if responsible is not None:
        where.append(Deal.responsible_id == responsible)
    return where


async def _totals(
    session: AsyncSession, ctx: FunnelContext, responsible: str | None
) -> dict[int | None, dict[str | None, tuple[int, Decimal]]]:
    """stage id -> currency -> (deals, amount); None stage: a CRM stage the funnel does not map.
    Unfiltered, from the live-deal counts (a few thousand rows); for one responsible, from that
    responsible's deal rows."""
    if responsible is None:
        return await stage_currency_totals(session, ctx.ref.id)
    rows = await session.execute(
        select(Deal.stage_id, Deal.currency, func.count(), func.coalesce(func.sum(Deal.amount), 0))
        .where(*_live(ctx, responsible))
        .group_by(Deal.stage_id, Deal.currency)
    )
    totals: dict[int | None, dict[str | None, tuple[int, Decimal]]] = {}
    for stage_id, currency, n, amount in rows:
        totals.setdefault(stage_id, {})[currency] = (int(n), Decimal(amount or 0))
    return totals


async def _overdue_count(
    session: AsyncSession, ctx: FunnelContext, stage: StageInfo, responsible: str | None, now: datetime
) -> int:
    if stage.sla_seconds is None:
        return 0
    # Counted in SQL so the column total is right whichever page is listed.
    return (
        await session.scalar(
            select(func.count()).where(
                *_live(ctx, responsible),
                Deal.stage_id == stage.id,
                Deal.stage_entered_at < now - timedelta(seconds=stage.sla_seconds),
            )
        )
        or 0
    )


async def _listed(
    session: AsyncSession,
    ctx: FunnelContext,
    stage: StageInfo,
    responsible: str | None,
    offset: int,
    cap: int,
) -> list[Deal]:
    """Longest in the stage first (the deals past the SLA lead, the most overdue on top), then the
    deals with no entry time, by id. Two reads, each in the order of ix_deals_funnel_stage_entered,
    so the database stops after the page's rows instead of sorting the whole column (a stage of
    10,000 deals took 10-38 ms a column on PostgreSQL): the deals with an entry time, then, on the
    page where those end, the ones without."""
    live = [*_live(ctx, responsible), Deal.stage_id == stage.id]
    timed = list(
        await session.scalars(
            select(Deal)
            .where(*live, Deal.stage_entered_at.is_not(None))
            .order_by(Deal.stage_entered_at, Deal.id)
            .offset(offset)
            .limit(cap)
        )
    )
    if len(timed) == cap:
        return timed
    # The timed deals end on this page (or before it): how many untimed ones the offset skips.
    skipped = 0
    if not timed and offset:
        counted = select(func.count()).where(*live, Deal.stage_entered_at.is_not(None))
        skipped = max(offset - (await session.scalar(counted) or 0), 0)
    untimed = await session.scalars(
        select(Deal)
        .where(*live, Deal.stage_entered_at.is_(None))
        .order_by(Deal.id)
        .offset(skipped)
        .limit(cap - len(timed))
    )
    return [*timed, *untimed]


def _pages(deals: int, cap: int, asked: int) -> tuple[int, int]:
    """(page shown, pages): a page past the end shows the last one (deals leave while it is open)."""
    pages = max(math.ceil(deals / cap), 1)
    return min(asked, pages), pages


async def funnel_board(
    session: AsyncSession,
    ctx: FunnelContext,
    *,
    cap: int = PER_COLUMN_CAP,
    now: datetime | None = None,
    query: BoardQuery | None = None,
) -> Board:
    return (await board_view(session, ctx, cap=cap, now=now, query=query)).board


async def board_view(
    session: AsyncSession,
    ctx: FunnelContext,
    *,
    cap: int = PER_COLUMN_CAP,
    now: datetime | None = None,
    query: BoardQuery | None = None,
) -> BoardView:
    now = now or utcnow()
    query = query or BoardQuery()
    totals = await _totals(session, ctx, query.responsible)
    columns: list[BoardColumn] = []
    pages: dict[str, ColumnPage] = {}
    for stage in ctx.stages:
        by_currency = totals.get(stage.id, {})
        deals = sum(n for n, _ in by_currency.values())
        page, last_page = _pages(deals, cap, query.page_of(stage.code))
        offset = (page - 1) * cap
        listed = await _listed(session, ctx, stage, query.responsible, offset, cap) if deals else []
        items = [_board_deal(d, stage, now) for d in listed]
        columns.append(
            BoardColumn(
                stage=stage,
                deals=deals,
                amount=sum((a for _, a in by_currency.values()), Decimal(0)),
                overdue=await _overdue_count(session, ctx, stage, query.responsible, now) if deals else 0,
                items=items,
            )
        )
        amounts = sorted(((c, a) for c, (n, a) in by_currency.items() if n), key=lambda p: p[0] or "")
        shown = (offset + 1, offset + len(items)) if items else (0, 0)
        pages[stage.code] = ColumnPage(page, last_page, *shown, amounts=amounts)
    unknown = sum(n for n, _ in totals.get(None, {}).values())
    board = Board(
        funnel=ctx.ref, columns=columns, unknown_stage_deals=unknown, per_column_cap=cap, generated_at=now
    )
    return BoardView(
        board=board,
        query=query,
        columns=pages,
        responsibles=await _responsibles(session, ctx),
        loss_reasons=await _loss_reason_names(session, ctx, columns),
    )


def _board_deal(deal: Deal, stage: StageInfo, now: datetime) -> BoardDeal:
    return BoardDeal(
        id=deal.id,
        crm_deal_id=deal.crm_deal_id,
        title=deal.title,
        amount=deal.amount,
        currency=deal.currency,
        responsible_id=deal.responsible_id,
        stage_entered_at=deal.stage_entered_at,
        overdue=is_overdue(deal.stage_entered_at, stage.sla_seconds, now),
    )


async def _responsibles(session: AsyncSession, ctx: FunnelContext) -> list[tuple[str, int]]:
    """Who is responsible for the funnel's live deals (whatever the filter), for the filter's list."""
    rows = await session.execute(
        select(Deal.responsible_id, func.count())
        .where(*_live(ctx, None), Deal.responsible_id.is_not(None))
        .group_by(Deal.responsible_id)
    )
    return sorted(((str(r), int(n)) for r, n in rows), key=lambda p: (len(p[0]), p[0]))


async def _loss_reason_names(
    session: AsyncSession, ctx: FunnelContext, columns: list[BoardColumn]
) -> dict[int, tuple[str, str]]:
    """The reason's name for each listed deal of a failure stage, as the template names it."""
    failure_ids = {c.stage.id for c in columns if c.stage.semantics == "failure"}
    listed = [d.id for c in columns if c.stage.id in failure_ids for d in c.items]
    if not listed:
        return {}
    rows = await session.execute(select(Deal.id, Deal.loss_reason).where(Deal.id.in_(listed)))
    values = {key: value for key, value in rows}
    named = await label_loss_reasons(session, ctx, [(v, 1) for v in set(values.values()) if v is not None])
    labels = {r.value: (r.label_ru, r.label_en) for r in named}
    return {deal_id: labels[v] for deal_id, v in values.items() if v is not None and v in labels}


# --- a deal's fields, named ------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRow:
    """One stored field of a deal: the CRM's key, the template's name for it, the value as stored
    and, for an enumeration, the option's name (None when the value names nothing the template has)."""

    key: str
    value: Any
    name: tuple[str, str] | None = None  # (ru, en)
    label: tuple[str, str] | None = None
    loss_reason: bool = False  # the field that carries the loss reason (named by the page)


async def deal_field_rows(
    session: AsyncSession, ctx: FunnelContext | None, fields: Mapping[str, Any]
) -> list[FieldRow]:
    """The deal page's field table: CRM field keys mapped to the template's fields, enumeration
    values (the loss reason, enum options) to their names. Without a funnel: the raw keys and values."""
    if ctx is None or ctx.template is None:
        return [FieldRow(key, value) for key, value in sorted(fields.items())]
    mapped = await session.execute(
        select(FunnelMapping.code, FunnelMapping.crm_id, FunnelMapping.crm_name).where(
            FunnelMapping.funnel_id == ctx.ref.id, FunnelMapping.kind == "field"
        )
    )
    code_of: dict[str, str] = {LOSS_REASON_FIELD: LOSS_REASON_FIELD, "loss_reason_id": LOSS_REASON_FIELD}
    for code, crm_id, crm_name in mapped:
        code_of[crm_id] = code
        if crm_name:
            code_of[crm_name] = code
    specs = {f.code: f for f in ctx.template.fields}
    options = await option_ids_of(session, ctx.ref.id)
    reasons = [v for k, v in fields.items() if code_of.get(k) == LOSS_REASON_FIELD and v not in (None, "")]
    named = await label_loss_reasons(session, ctx, [(str(v), 1) for v in reasons], options)
    reason_labels = {r.value: (r.label_ru, r.label_en) for r in named if r.code is not None}
    rows = []
    for key, value in sorted(fields.items()):
        field_code = code_of.get(key)
        if field_code == LOSS_REASON_FIELD:
            rows.append(FieldRow(key, value, None, reason_labels.get(str(value)), loss_reason=True))
            continue
        spec = specs.get(field_code) if field_code else None
        if spec is None:
            rows.append(FieldRow(key, value))
            continue
        code = options.get(field_code or "", {}).get(str(value), str(value))
        option = next((o for o in spec.options if code in (o.code, o.name.ru, o.name.en)), None)
        label = (option.name.ru, option.name.en) if option else None
        rows.append(FieldRow(key, value, (spec.name.ru, spec.name.en), label))
    return rows


# --- one deal ----------------------------------------------------------------------------------------


async def deal_commands(session: AsyncSession, deal_id: int, limit: int = 200) -> list[DealCommand]:
    rows = await session.scalars(
        select(OutboxCommand)
        .where(OutboxCommand.deal_id == deal_id)
        .order_by(OutboxCommand.created_at.desc(), OutboxCommand.id.desc())
        .limit(limit)
    )
    return [
        DealCommand(
            id=c.id,
            kind=c.kind,
            status=c.status,
            attempts=c.attempts,
            last_error=c.last_error,
            created_at=c.created_at,
            done_at=c.done_at,
        )
        for c in rows
    ]


async def deal_funnel_id(session: AsyncSession, deal_id: int) -> int | None:
    return await session.scalar(select(Deal.funnel_id).where(Deal.id == deal_id))
