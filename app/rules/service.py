"""Rules engine glue: load a funnel's rules, react to mirrored stage transitions, queue effects.

`apply_rules` runs inside the ingest transaction (app.deals.ingest: inbox processor, reconcile,
`funnelsync sync`), so the transition, the outbox rows it causes and the processed event or reconcile
cursor commit together: a crash re-runs all of it, and the outbox's idempotency keys make the re-run
add nothing. Our own moves come back as webhooks; they are matched to their outbox command (echo
suppression) and fire no rules, so a revert never loops.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import Connection
from app.db import utcnow
from app.deals.mirror import MirrorResult
from app.deals.models import Deal, StageTransition
from app.deals.service import DealNotFound
from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from app.library.service import own_template
from app.outbox.enqueue import enqueue
from app.outbox.models import OutboxCommand
from app.outbox.statuses import CommandStatus, RuleName
from app.rules.engine import (
    DealState,
    Effect,
    FunnelRules,
    PreviousFollowUp,
    labels,
    missing_fields,
    on_entry,
)
from funnel_templates.loader import library
from funnel_templates.schema import LOSS_REASON_FIELD, FunnelTemplate

# A move we queued is matched to the transition it causes if it was queued at most this long before
# the CRM stamped the transition (delivery retries), or this little after (coarse/skewed CRM clocks).
ECHO_WINDOW = timedelta(hours=1)
ECHO_SKEW = timedelta(minutes=5)
# Transitions older than this are history the mirror is catching up on (first full reconcile, a
# long outage): recorded, but creating tasks for them now would flood the CRM with stale work.
STALE_AFTER = timedelta(days=1)
LIVE_MOVE_STATUSES = (CommandStatus.PENDING, CommandStatus.FAILED, CommandStatus.DONE)

TemplateLookup = Callable[[str], FunnelTemplate | None]


def library_template(key: str) -> FunnelTemplate | None:
    return library().get(key)


@dataclass(frozen=True)
class FunnelContext:
    funnel_id: int
    rules: FunnelRules
    codes: dict[int, str]  # local stage id -> template stage code


async def load_funnel(
    session: AsyncSession,
    connection: Connection,
    funnel_id: int,
    templates: TemplateLookup = library_template,
) -> FunnelContext | None:
    """The rules of one provisioned funnel, or None when its template is unknown (deleted from the
    library) or it has no pipeline yet."""
    funnel = await session.get(Funnel, funnel_id)
    if funnel is None or funnel.crm_pipeline_id is None:
        return None
    # A company's own template kept with the connection wins over any lookup by key.
    template = own_template(connection, funnel.template_key) or templates(funnel.template_key)
    if template is None:
        return None
    known = {s.code for s in template.stages}
    stages = [
        s
        for s in await session.scalars(select(FunnelStage).where(FunnelStage.funnel_id == funnel_id))
        if s.code in known and s.crm_stage_id
    ]
    rows = list(await session.scalars(select(FunnelMapping).where(FunnelMapping.funnel_id == funnel_id)))
    mapped = {m.code: m for m in rows if m.kind == "field"}
    field_keys: dict[str, list[str]] = {}
    for code in [f.code for f in template.fields] + [LOSS_REASON_FIELD]:
        row = mapped.get(code)
        # Snapshots key custom fields by id (amoCRM) or by name (Bitrix24 "UF_CRM_..."): try both.
        field_keys[code] = [k for k in (row.crm_id, row.crm_name) if k] if row else []
    field_keys[LOSS_REASON_FIELD].insert(0, "loss_reason_id")  # amoCRM's native reason (mirror)
    rules = FunnelRules(
        template=template,
        pipeline_id=funnel.crm_pipeline_id,
        stage_ids={s.code: str(s.crm_stage_id) for s in stages},
        field_keys=field_keys,
        settings=dict(connection.settings or {}),
        option_ids=option_ids(rows),
    )
    return FunnelContext(funnel_id, rules, {s.id: s.code for s in stages})


def option_ids(rows: Sequence[FunnelMapping]) -> dict[str, dict[str, str]]:
    """Field code -> {CRM option id -> option code}, from the enumeration options provisioning
    recorded and, for the loss reason, the CRM's own reasons (amoCRM loss_reason_id)."""
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        if row.kind == "field_option":
            field_code, _, option = row.code.partition(":")
            out.setdefault(field_code, {})[row.crm_id] = option
        elif row.kind == "loss_reason":
            out.setdefault(LOSS_REASON_FIELD, {})[row.crm_id] = row.code
    return out


class FunnelCache:
    """Funnel contexts loaded once per job run (one connection's deals share a few funnels)."""

    def __init__(self, connection: Connection, templates: TemplateLookup = library_template) -> None:
        self.connection = connection
        self.templates = templates
        self._loaded: dict[int, FunnelContext | None] = {}

    async def get(self, session: AsyncSession, funnel_id: int) -> FunnelContext | None:
        if funnel_id not in self._loaded:
            self._loaded[funnel_id] = await load_funnel(session, self.connection, funnel_id, self.templates)
        return self._loaded[funnel_id]


def deal_state(deal: Deal) -> DealState:
    return DealState(
        id=deal.id,
        crm_deal_id=deal.crm_deal_id,
        title=deal.title,
        amount=deal.amount,
        responsible_id=deal.responsible_id,
        fields=dict(deal.fields or {}),
    )


async def enqueue_effects(
    session: AsyncSession, connection_id: int, deal_id: int, effects: Sequence[Effect]
) -> int:
    """Queue effects; returns how many were new (a known idempotency key is skipped). An effect
    that names another (`after`) is queued to wait for that one's command, which is queued first."""
    added = 0
    for effect in effects:
        if effect.kind == "redate":
            added += await _redate_queued_task(
                session, int(effect.payload["command_id"]), effect.payload["due_at"]
            )
            continue
        after_command_id = None
        if effect.after is not None:
            after_command_id = await session.scalar(
                select(OutboxCommand.id).where(OutboxCommand.idempotency_key == effect.after)
            )
            if after_command_id is None:
                # Sending it unconditionally is exactly what `after` exists to prevent.
                raise ValueError(f"effect {effect.key} waits for {effect.after}, which was not queued")
        if await enqueue(
            session,
            connection_id=connection_id,
            kind=effect.kind,
            payload=effect.payload,
            idempotency_key=effect.key,
            deal_id=deal_id,
            after_command_id=after_command_id,
            rule=effect.rule,
            stage_entry_id=effect.entry_id,
        ):
            added += 1
    return added


async def _redate_queued_task(session: AsyncSession, command_id: int, due_at: str) -> int:
    """Give a follow-up task that has not reached the CRM yet its new due date, in the outbox."""
    command = await session.get(OutboxCommand, command_id)
    if (
        command is None
        or command.status not in (CommandStatus.PENDING, CommandStatus.FAILED)
        or command.payload.get("due_at") == due_at
    ):
        return 0
    command.payload = {**command.payload, "due_at": due_at}
    return 1


async def previous_follow_ups(session: AsyncSession, entry_ids: Iterable[int]) -> dict[int, PreviousFollowUp]:
    """Per stage entry (transition id) of the given ones: the newest follow-up task's create
    command, and the due date the newest create or deadline move gave it."""
    entry_ids = list(entry_ids)
    if not entry_ids:
        return {}
    rows = await session.scalars(
        select(OutboxCommand)
        .where(
            OutboxCommand.stage_entry_id.in_(entry_ids),
            OutboxCommand.rule.in_((RuleName.FOLLOW_UP_TASK, RuleName.FOLLOW_UP_DEADLINE_MOVE)),
        )
        .order_by(OutboxCommand.id)
    )
    latest: dict[int, PreviousFollowUp] = {}
    for command in rows:
        entry_id = command.stage_entry_id
        assert entry_id is not None  # selected by it
        due = datetime.fromisoformat(command.payload["due_at"])
        if command.rule == RuleName.FOLLOW_UP_TASK:
            latest[entry_id] = PreviousFollowUp(
                command.id,
                due,
                str(command.payload["title"]),
                status=command.status,
                crm_task_id=command.crm_result_id,
                last_command_id=command.id,
            )
        elif entry_id in latest and command.payload.get("task_command_id") == latest[entry_id].command_id:
            latest[entry_id] = replace(latest[entry_id], due_at=due, last_command_id=command.id)
    return latest


async def current_entries(session: AsyncSession, deal_ids: Sequence[int]) -> dict[int, int]:
    """Deal id -> id of its latest stage transition, which is its entry into its current stage (the
    mirror appends a transition on every stage change and never goes back in time)."""
    if not deal_ids:
        return {}
    rows = await session.execute(
        select(StageTransition.deal_id, func.max(StageTransition.id))
        .where(StageTransition.deal_id.in_(list(deal_ids)))
        .group_by(StageTransition.deal_id)
    )
    return {deal_id: entry_id for deal_id, entry_id in rows}


# --- reacting to mirrored transitions (called by app.deals.ingest) --------------------------------


@dataclass
class RulesOutcome:
    evaluated: int = 0
    echoes: int = 0
    skipped: int = 0
    enqueued: int = 0


@dataclass
class LiveEntries:
    """The stage entries of one mirror batch that demand something now, and how many did not."""

    entries: list[tuple[Deal, StageTransition]] = field(default_factory=list)
    echoes: int = 0
    skipped: int = 0


async def live_stage_entries(session: AsyncSession, result: MirrorResult, now: datetime) -> LiveEntries:
    """The entries of `result` that are where the deal is now and were made by a person: per deal
    only its latest transition, of a deal not deleted, in a funnel, still in that stage, not the
    echo of our own move, and not history older than STALE_AFTER. Shared by the rules and the
    automations (app.automations.runner), which run one after the other on the same batch: an echo
    matched by the first is recognised by the second (see echo_of)."""
    await session.flush()  # transitions need their ids for echo bookkeeping
    # Several transitions of one deal in one batch: only the last one is where the deal is now;
    # a stage it already left demands nothing any more (Bitrix24 never even shows those).
    latest: dict[int, StageTransition] = {deal.id: t for deal, t in result.entered}
    live = LiveEntries()
    for deal, transition in result.entered:
        if (
            latest[deal.id] is not transition
            or deal.deleted_at is not None
            or deal.funnel_id is None
            or transition.to_stage_id is None
            or deal.crm_stage_id != transition.to_crm_stage_id
        ):
            live.skipped += 1
            continue
        echo = await echo_of(session, deal, transition)
        # A move a person asked for through our API is their decision: its stage entry counts, once.
        if echo is not None and not is_person_move(echo.rule):
            live.echoes += 1
            continue
        if transition.at < now - STALE_AFTER:
            live.skipped += 1
            continue
        live.entries.append((deal, transition))
    return live


async def apply_rules(
    session: AsyncSession,
    connection: Connection,
    result: MirrorResult,
    *,
    now: datetime | None = None,
    templates: TemplateLookup = library_template,
) -> RulesOutcome:
    now = now or utcnow()
    live = await live_stage_entries(session, result, now)
    outcome = RulesOutcome(echoes=live.echoes, skipped=live.skipped)
    cache = FunnelCache(connection, templates)
    for deal, transition in live.entries:
        assert deal.funnel_id is not None and transition.to_stage_id is not None  # live entries have them
        ctx = await cache.get(session, deal.funnel_id)
        code = ctx.codes.get(transition.to_stage_id) if ctx else None
        if ctx is None or code is None:
            outcome.skipped += 1
            continue
        from_code = ctx.codes.get(transition.from_stage_id) if transition.from_stage_id else None
        previous = await previous_follow_ups(session, [transition.id])
        effects = on_entry(
            ctx.rules,
            deal_state(deal),
            code,
            entry_id=transition.id,
            now=now,
            from_stage_code=from_code,
            previous_follow_up=previous.get(transition.id),
        )
        outcome.evaluated += 1
        outcome.enqueued += await enqueue_effects(session, connection.id, deal.id, effects)
    return outcome


def is_person_move(rule: RuleName | None) -> bool:
    """Whether a move command's rule says a person asked for it (POST /api/deals/{id}/move:
    request_move below), as opposed to the rules' own reverts."""
    return rule == RuleName.API_MOVE


async def echo_of(session: AsyncSession, deal: Deal, transition: StageTransition) -> OutboxCommand | None:
    """The move command of ours that explains this transition: the one already matched to it (an
    earlier look at the same batch), else a new match (match_echo)."""
    matched = await session.scalar(
        select(OutboxCommand).where(
            OutboxCommand.deal_id == deal.id,
            OutboxCommand.kind == "move",
            OutboxCommand.echo_transition_id == transition.id,
        )
    )
    return matched if matched is not None else await match_echo(session, deal, transition)


async def match_echo(session: AsyncSession, deal: Deal, transition: StageTransition) -> OutboxCommand | None:
    """The move command (ours, not yet matched) that explains this transition, marked as matched so
    a later move by a person to the same stage is not mistaken for it."""
    if transition.from_crm_stage_id is None:
        return None  # a deal's creation is never our move
    commands = await session.scalars(
        select(OutboxCommand)
        .where(
            OutboxCommand.deal_id == deal.id,
            OutboxCommand.kind == "move",
            OutboxCommand.status.in_(LIVE_MOVE_STATUSES),
            OutboxCommand.created_at >= transition.at - ECHO_WINDOW,
            OutboxCommand.created_at <= transition.at + ECHO_SKEW,
            OutboxCommand.echo_transition_id.is_(None),
        )
        .order_by(OutboxCommand.id)
    )
    for command in commands:
        if str(command.payload.get("stage_id")) == transition.to_crm_stage_id:
            command.echo_transition_id = transition.id
            return command
    return None


# --- moves requested through the API --------------------------------------------------------------


class MoveRefused(ValueError):
    """The move cannot be queued (unknown stage, unmanaged deal, already there)."""


class MissingRequiredFields(MoveRefused):
    def __init__(self, stage: str, fields: list[str], text: str) -> None:
        super().__init__(text)
        self.stage = stage
        self.fields = fields


@dataclass(frozen=True)
class MoveQueued:
    command_id: int
    created: bool  # False: the same request key was queued before


async def missing_for_move(
    session: AsyncSession, deal: Deal, stage_code: str, templates: TemplateLookup = library_template
) -> list[str]:
    """Required fields of `stage_code` the deal lacks (empty when the funnel's rules are unknown):
    a move API should refuse such a move, since the rules would revert it at once."""
    connection = await session.get(Connection, deal.connection_id)
    if connection is None or deal.funnel_id is None:
        return []
    ctx = await load_funnel(session, connection, deal.funnel_id, templates)
    if ctx is None or stage_code not in {s.code for s in ctx.rules.template.stages}:
        return []
    return missing_fields(ctx.rules, ctx.rules.template.stage(stage_code), deal_state(deal))


async def request_move(
    session: AsyncSession,
    deal_id: int,
    stage_code: str,
    *,
    request_key: str | None = None,
    templates: TemplateLookup = library_template,
) -> MoveQueued:
    """Queue a move of a deal to a stage of its funnel, refused when the target stage's required
    fields are empty. The stage's entry rules run when the CRM confirms the move (its webhook is
    matched to this command)."""
    deal = await session.get(Deal, deal_id)
    if deal is None or deal.deleted_at is not None:
        raise DealNotFound(f"no deal with id {deal_id}")
    connection = await session.get(Connection, deal.connection_id)
    ctx = (
        await load_funnel(session, connection, deal.funnel_id, templates)
        if connection and deal.funnel_id
        else None
    )
    if connection is None or ctx is None:
        raise MoveRefused(f"deal {deal_id} is not in a funnel FunnelSync manages")
    target = ctx.rules.stage_ids.get(stage_code)
    if target is None:
        raise MoveRefused(f"stage {stage_code!r} is not a provisioned stage of {ctx.rules.template.key}")
    if target == deal.crm_stage_id:
        raise MoveRefused(f"deal {deal_id} is already in stage {stage_code}")
    missing = await missing_for_move(session, deal, stage_code, templates)
    if missing:
        raise MissingRequiredFields(
            stage_code,
            missing,
            f"stage {stage_code} requires {labels(ctx.rules.template, missing)}; fill them in first",
        )
    key = f"api:move:{deal.id}:{stage_code}:{request_key or uuid.uuid4().hex}"
    payload = {"crm_deal_id": deal.crm_deal_id, "pipeline_id": ctx.rules.pipeline_id, "stage_id": target}
    created = await enqueue(
        session,
        connection_id=connection.id,
        kind="move",
        payload=payload,
        idempotency_key=key,
        deal_id=deal.id,
        rule=RuleName.API_MOVE,
    )
    command_id = await session.scalar(select(OutboxCommand.id).where(OutboxCommand.idempotency_key == key))
    assert command_id is not None
    return MoveQueued(command_id, created)
