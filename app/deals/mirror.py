"""The deal mirror: apply CRM deal snapshots to the local tables, exactly once and in order.

Every path that learns about a deal (webhook, reconcile, our own push) ends here. A snapshot older
than what we hold is ignored (the mirror never goes back in time); one with the same modify time is a
duplicate and changes nothing; a newer one updates the deal and, when the stage changed, appends a
stage transition stamped with the CRM's modify time and with when the deal had entered the stage it
left (its stage_entered_at before the move), so analytics can pair an exit with its entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics import daily_counts
from app.db import dialect_insert, utcnow
from app.deals.loss_reasons import loss_reason_fields, loss_reason_of
from app.deals.models import Deal, StageTransition
from app.funnels.models import Funnel, FunnelStage
from connectors.base import DealSnapshot

# What _new_deal/_apply set on a new deal: the columns of its INSERT.
_NEW_DEAL_COLUMNS = (
    "connection_id",
    "crm_deal_id",
    "funnel_id",
    "managed",
    "stage_id",
    "crm_pipeline_id",
    "crm_stage_id",
    "title",
    "amount",
    "currency",
    "responsible_id",
    "fields",
    "loss_reason",
    "crm_updated_at",
    "crm_created_at",
    "stage_entered_at",
)


@dataclass(frozen=True)
class StageIndex:
    """CRM pipeline/stage ids of one connection -> local funnel/stage ids (the provisioning map).

    Stage ids are keyed with their pipeline: amoCRM's won/lost ids (142/143) repeat in every pipeline.
    """

    funnels: dict[str, int]  # crm pipeline id -> funnel id
    stages: dict[tuple[str, str], int]  # (crm pipeline id, crm stage id) -> stage id
    # funnel id -> CRM ids of the fields provisioned to carry the loss reason
    loss_reason_fields: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def funnel_for(self, pipeline_id: str) -> int | None:
        return self.funnels.get(pipeline_id)

    def stage_for(self, pipeline_id: str, stage_id: str) -> int | None:
        return self.stages.get((pipeline_id, stage_id))


async def load_stage_index(session: AsyncSession, connection_id: int) -> StageIndex:
    rows = await session.execute(
        select(Funnel.id, Funnel.crm_pipeline_id, FunnelStage.id, FunnelStage.crm_stage_id)
        .join(FunnelStage, FunnelStage.funnel_id == Funnel.id, isouter=True)
        .where(Funnel.connection_id == connection_id, Funnel.crm_pipeline_id.is_not(None))
    )
    funnels: dict[str, int] = {}
    stages: dict[tuple[str, str], int] = {}
    for funnel_id, pipeline_id, stage_id, crm_stage_id in rows:
        if pipeline_id is None:
            continue
        funnels[pipeline_id] = funnel_id
        if stage_id is not None and crm_stage_id is not None:
            stages[(pipeline_id, crm_stage_id)] = stage_id
    return StageIndex(funnels, stages, await loss_reason_fields(session, sorted(set(funnels.values()))))


@dataclass
class MirrorResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    deleted: int = 0
    transitions: list[StageTransition] = field(default_factory=list)
    # Deals whose stage entered a new stage: the rules engine's input.
    entered: list[tuple[Deal, StageTransition]] = field(default_factory=list)


async def _existing(session: AsyncSession, connection_id: int, crm_ids: Sequence[str]) -> dict[str, Deal]:
    deals: dict[str, Deal] = {}
    # Chunked IN lists: SQLite caps bound parameters per statement.
    for start in range(0, len(crm_ids), 500):
        chunk = list(crm_ids[start : start + 500])
        for deal in await session.scalars(
            select(Deal).where(Deal.connection_id == connection_id, Deal.crm_deal_id.in_(chunk))
        ):
            deals[deal.crm_deal_id] = deal
    return deals


async def mirror_snapshots(
    session: AsyncSession,
    connection_id: int,
    snapshots: Sequence[DealSnapshot],
    index: StageIndex,
    source: str,
) -> MirrorResult:
    """Upsert deals from snapshots (several may name the same deal; the newest wins, in order)."""
    result = MirrorResult()
    ordered = sorted(snapshots, key=lambda s: s.updated_at)
    existing = await _existing(session, connection_id, list({s.id for s in ordered}))
    # Each new deal is created from its earliest snapshot; later ones update it.
    earliest: dict[str, DealSnapshot] = {}
    for snapshot in ordered:
        if snapshot.id not in existing:
            earliest.setdefault(snapshot.id, snapshot)
    created = await _insert_new_deals(session, connection_id, earliest, index, existing)
    for snapshot in ordered:
        deal = existing[snapshot.id]
        if created.get(snapshot.id) is snapshot:
            result.created += 1
            _record_transition(session, result, deal, None, None, None, snapshot, source)
            continue
        _update(session, result, deal, snapshot, index, source)
    # In this transaction: the analytics' daily counts commit with the transitions they count.
    await daily_counts.record(session, result.transitions)
    return result


async def _insert_new_deals(
    session: AsyncSession,
    connection_id: int,
    earliest: dict[str, DealSnapshot],
    index: StageIndex,
    existing: dict[str, Deal],
) -> dict[str, DealSnapshot]:
    """Insert the deals `existing` lacks (one batched INSERT per page, not one per deal: their
    transitions need their ids) and add them all to `existing`; returns the ones this call created,
    with the snapshot each was created from.

    The inbox processor and the scheduled reconcile hold different leases, so both can find the same
    deal missing and insert it. ON CONFLICT DO NOTHING lets the second one through without an
    IntegrityError (a SAVEPOINT would not do: under pysqlite's default transaction handling it
    commits the outer transaction); the deals someone else inserted are then loaded and treated as
    existing ones, so their snapshots are applied as updates when newer."""
    if not earliest:
        return {}
    rows = [_new_deal_values(connection_id, snapshot, index) for snapshot in earliest.values()]
    # One statement with the rows as executemany parameters: SQLAlchemy sends them as multi-row
    # INSERTs ("insertmanyvalues") from one compiled form, where .values([...]) compiled a new
    # statement of some 20 parameters a row for every page (two thirds of a full resync's CPU,
    # py-spy). The Core table, not the entity: the ORM's bulk path would want ORM objects back.
    table = Deal.__table__
    statement = (
        dialect_insert(session, table)
        .on_conflict_do_nothing(index_elements=["connection_id", "crm_deal_id"])
        .returning(table.c.crm_deal_id)
    )
    inserted = {row.crm_deal_id for row in await session.execute(statement, rows)}
    existing.update(await _existing(session, connection_id, list(earliest)))
    return {crm_id: snapshot for crm_id, snapshot in earliest.items() if crm_id in inserted}


def _new_deal_values(connection_id: int, snapshot: DealSnapshot, index: StageIndex) -> dict[str, Any]:
    """The row of a new deal as _apply builds it, with the defaults a Core INSERT does not fill in."""
    deal = _new_deal(connection_id, snapshot, index)
    now = utcnow()
    values = {column: getattr(deal, column) for column in _NEW_DEAL_COLUMNS}
    return {**values, "deleted_at": None, "created_at": now, "updated_at": now}


def _update(
    session: AsyncSession,
    result: MirrorResult,
    deal: Deal,
    snapshot: DealSnapshot,
    index: StageIndex,
    source: str,
) -> None:
    """Apply a snapshot of a deal we hold, unless it is older than or the same as what we hold."""
    if snapshot.updated_at < deal.crm_updated_at:
        result.stale += 1
        return
    if snapshot.updated_at == deal.crm_updated_at and deal.deleted_at is None and _same(deal, snapshot):
        # A duplicate delivery or our own echo. (Same modify time but different content is
        # applied: Bitrix24 stamps modify times to the second, and a later fetch is newer.)
        result.unchanged += 1
        return
    # _apply overwrites all three when the stage changes: the transition records what they were.
    previous_crm_stage, previous_stage = deal.crm_stage_id, deal.stage_id
    previous_entered_at = deal.stage_entered_at
    moved = (deal.crm_pipeline_id, deal.crm_stage_id) != (snapshot.pipeline_id, snapshot.stage_id)
    _apply(deal, snapshot, index)
    deal.deleted_at = None  # a restored deal comes back
    result.updated += 1
    if moved:
        _record_transition(
            session, result, deal, previous_crm_stage, previous_stage, previous_entered_at, snapshot, source
        )


async def tombstone(session: AsyncSession, connection_id: int, crm_ids: Sequence[str], at: datetime) -> int:
    """Mark deleted deals; their history stays. Unknown ids are ignored."""
    existing = await _existing(session, connection_id, crm_ids)
    count = 0
    for deal in existing.values():
        if deal.deleted_at is None and at >= deal.crm_updated_at:
            deal.deleted_at = at
            count += 1
    return count


def _same(deal: Deal, snapshot: DealSnapshot) -> bool:
    return (
        deal.crm_pipeline_id == snapshot.pipeline_id
        and deal.crm_stage_id == snapshot.stage_id
        and deal.title == snapshot.title[:512]
        and deal.amount == snapshot.amount
        and deal.responsible_id == snapshot.responsible_id
        and {k: v for k, v in deal.fields.items() if k != "loss_reason_id"}
        == {str(k): v for k, v in snapshot.fields.items()}
    )


def _new_deal(connection_id: int, snapshot: DealSnapshot, index: StageIndex) -> Deal:
    deal = Deal(connection_id=connection_id, crm_deal_id=snapshot.id)
    _apply(deal, snapshot, index)
    return deal


def _apply(deal: Deal, snapshot: DealSnapshot, index: StageIndex) -> None:
    funnel_id = index.funnel_for(snapshot.pipeline_id)
    deal.funnel_id = funnel_id
    deal.managed = funnel_id is not None
    deal.stage_id = index.stage_for(snapshot.pipeline_id, snapshot.stage_id)
    if (deal.crm_pipeline_id, deal.crm_stage_id) != (snapshot.pipeline_id, snapshot.stage_id):
        deal.stage_entered_at = snapshot.updated_at
    deal.crm_pipeline_id = snapshot.pipeline_id
    deal.crm_stage_id = snapshot.stage_id
    deal.title = snapshot.title[:512]
    deal.amount = snapshot.amount
    deal.currency = snapshot.currency
    deal.responsible_id = snapshot.responsible_id
    deal.fields = {str(k): v for k, v in snapshot.fields.items()}
    if snapshot.loss_reason_id is not None:
        deal.fields["loss_reason_id"] = snapshot.loss_reason_id
    reason_fields = index.loss_reason_fields.get(funnel_id, ()) if funnel_id is not None else ()
    deal.loss_reason = loss_reason_of(deal.fields, reason_fields)
    deal.crm_updated_at = snapshot.updated_at
    deal.crm_created_at = snapshot.created_at


def _record_transition(
    session: AsyncSession,
    result: MirrorResult,
    deal: Deal,
    from_crm_stage: str | None,
    from_stage: int | None,
    from_stage_entered_at: datetime | None,
    snapshot: DealSnapshot,
    source: str,
) -> None:
    """Append the move to `snapshot`'s stage; the from_* values are the deal's before the move (all
    None for the transition that creates the deal)."""
    transition = StageTransition(
        deal_id=deal.id,
        from_crm_stage_id=from_crm_stage,
        to_crm_stage_id=snapshot.stage_id,
        from_stage_id=from_stage,
        to_stage_id=deal.stage_id,
        at=snapshot.updated_at,
        from_stage_entered_at=from_stage_entered_at,
        source=source,
    )
    session.add(transition)
    result.transitions.append(transition)
    result.entered.append((deal, transition))
