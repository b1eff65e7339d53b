"""An automation effect becomes work: a CRM command in the outbox (move, set_field, task,
create_deal) or a message in the message outbox (notify, webhook).

Every row carries the effect's idempotency key, so queueing the same effect again (the sweep and the
ingest both seeing it, a re-run after a crash, two processes) adds nothing. Nothing here calls a
CRM: payloads are the outbox's command kinds (app.outbox.items), in the connector's neutral form.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.automations.engine import AutomationEffect
from app.automations.field_writes import Unwritable, field_write
from app.connections.models import Connection
from app.deals.models import Deal
from app.funnels.models import Funnel
from app.messages.enqueue import enqueue_notify, enqueue_webhook
from app.messages.models import DealContacts
from app.messages.policy import policy_of
from app.outbox.enqueue import enqueue
from app.outbox.statuses import RuleName
from app.rules.engine import (
    DealState,
    FunnelRules,
    StageEntry,
    field_value,
    option_code,
    option_name,
    parse_when,
    role_task,
    task_effect,
)
from app.rules.service import FunnelCache, FunnelContext, TemplateLookup, deal_state, library_template
from connectors.descriptor import descriptor_for
from funnel_templates.automations import (
    CreateDealAction,
    MoveAction,
    NotifyAction,
    SetFieldAction,
    TaskAction,
    WebhookAction,
)
from funnel_templates.basics import LocalizedText
from funnel_templates.placeholders import MissingPlaceholderValues, render
from funnel_templates.schema import FieldSpec

log = logging.getLogger("funnelsync.automations")

# A deal title is ours, not a client's message: a placeholder without a value reads as this rather
# than refusing the follow-on deal.
NO_VALUE = "—"
DATE_TYPES = ("date", "datetime")


@dataclass(frozen=True)
class DealAt:
    """A deal in its current stage: what an action is evaluated against."""

    deal: Deal
    ctx: FunnelContext
    stage_code: str
    entry_id: int  # its current stage entry (StageTransition id)

    @property
    def state(self) -> DealState:
        return deal_state(self.deal)


@dataclass
class ActionQueue:
    """Queues effects within one transaction. One per run: funnels, contacts and warnings are
    remembered for the run (a missing follow-on funnel is logged once, not once per deal)."""

    session: AsyncSession
    connection: Connection
    now: datetime
    templates: TemplateLookup = library_template
    warned: set[str] = field(default_factory=set)
    funnels: FunnelCache = field(init=False)
    _funnel_ids: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.funnels = FunnelCache(self.connection, self.templates)

    async def queue_due(self, at: DealAt, effects: list[AutomationEffect]) -> int:
        """Queue the effects due by `now`; returns how many rows were new. A stage-entry or stalled
        effect of an entry the deal has left is void; later ones wait for the sweep."""
        added = 0
        for effect in effects:
            if effect.fire_at > self.now or (effect.entry_id is not None and effect.entry_id != at.entry_id):
                continue
            added += await self.queue(at, effect)
        return added

    async def queue(self, at: DealAt, effect: AutomationEffect) -> bool:
        action = effect.action
        if isinstance(action, NotifyAction):
            return await enqueue_notify(
                self.session,
                connection_id=self.connection.id,
                deal_id=at.deal.id,
                automation=effect.automation,
                key=effect.key,
                channels=list(action.channels),
                message=action.message.model_dump(),
                subject=action.subject.model_dump() if action.subject else None,
                now=self.now,
            )
        if isinstance(action, WebhookAction):
            return await enqueue_webhook(
                self.session,
                connection_id=self.connection.id,
                deal_id=at.deal.id,
                automation=effect.automation,
                key=effect.key,
                event=action.event,
                data=deal_body(at),
                now=self.now,
            )
        command = await self._command(at, effect)
        if command is None:
            return False
        kind, payload = command
        return await enqueue(
            self.session,
            connection_id=self.connection.id,
            kind=kind,
            payload=payload,
            idempotency_key=effect.key,
            deal_id=at.deal.id,
            rule=RuleName.AUTOMATION,
            stage_entry_id=effect.entry_id,
        )

    async def _command(self, at: DealAt, effect: AutomationEffect) -> tuple[str, dict[str, Any]] | None:
        """The outbox command (kind, payload) of a CRM action, or None when there is nothing to do."""
        action = effect.action
        if isinstance(action, MoveAction):
            return move_command(at, action)
        if isinstance(action, SetFieldAction):
            return await self._set_field_command(at, action, effect.automation)
        if isinstance(action, TaskAction):
            title = await self._text(at, action.title)
            entry = StageEntry(at.state, at.ctx.rules.template.stage(at.stage_code), at.entry_id)
            task = role_task(at.ctx.rules, entry, action.assignee, title, self.now + action.due_in)
            return "task", task_effect(entry, RuleName.AUTOMATION, "", task).payload
        if isinstance(action, CreateDealAction):
            return await self._create_deal_command(at, action, effect.automation)
        raise TypeError(f"no command for action {action!r}")  # notify/webhook are messages

    async def _set_field_command(
        self, at: DealAt, action: SetFieldAction, automation: str
    ) -> tuple[str, dict[str, Any]] | None:
        descriptor = descriptor_for(self.connection.crm)
        write = await field_write(self.session, descriptor, at.ctx.funnel_id, at.ctx.rules.template, action)
        if isinstance(write, Unwritable):
            self.warn_once(
                f"set_field:{at.ctx.funnel_id}:{action.field}:{action.value}",
                "automation %r of %s cannot set %r: %s; nothing queued",
                automation,
                at.ctx.rules.template.key,
                action.field,
                write.reason,
            )
            return None
        return "fields", {"crm_deal_id": at.deal.crm_deal_id, **write}

    async def _create_deal_command(
        self, at: DealAt, action: CreateDealAction, automation: str
    ) -> tuple[str, dict[str, Any]] | None:
        target = await self.funnel_of(action.funnel)
        stage = action.stage or (target.rules.template.stages[0].code if target else "")
        stage_id = target.rules.stage_ids.get(stage) if target else None
        if target is None or stage_id is None:
            self.warn_once(
                f"create_deal:{action.funnel}",
                "automation %r of %s creates a deal in funnel %r, which is not provisioned on "
                "connection %s: nothing queued",
                automation,
                at.ctx.rules.template.key,
                action.funnel,
                self.connection.name,
            )
            return None
        payload: dict[str, Any] = {
            "pipeline_id": target.rules.pipeline_id,
            "stage_id": stage_id,
            "title": await self._text(at, action.title),
            "fields": {},
            "responsible_id": at.deal.responsible_id,
            "contact_ids": [c["id"] for c in await self.contacts(at.deal.id) if c.get("id")],
        }
        return "deal", payload

    async def funnel_of(self, template_key: str) -> FunnelContext | None:
        """The funnel provisioned from `template_key` on this connection, if any."""
        if template_key not in self._funnel_ids:
            self._funnel_ids[template_key] = await self.session.scalar(
                select(Funnel.id).where(
                    Funnel.connection_id == self.connection.id, Funnel.template_key == template_key
                )
            )
        funnel_id = self._funnel_ids[template_key]
        return await self.funnels.get(self.session, funnel_id) if funnel_id is not None else None

    async def contacts(self, deal_id: int) -> list[dict[str, Any]]:
        """The deal's contacts as cached with the mirror (primary first); none when not cached."""
        row = await self.session.get(DealContacts, deal_id)
        return list(row.contacts or []) if row else []

    async def _text(self, at: DealAt, text: LocalizedText) -> str:
        """A title in the connection's language, placeholders filled in (NO_VALUE where unknown)."""
        policy = policy_of(self.connection)
        contacts = await self.contacts(at.deal.id)
        values: dict[str, object] = {
            **deal_values(at),
            "contact.name": contacts[0].get("name") if contacts else None,
            "company.name": policy.company_name,
        }
        chosen = text.en if policy.language == "en" else text.ru
        try:
            return render(chosen, values)
        except MissingPlaceholderValues as exc:
            return render(chosen, {**values, **dict.fromkeys(exc.names, NO_VALUE)})

    def warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message, *args)


def move_command(at: DealAt, action: MoveAction) -> tuple[str, dict[str, Any]] | None:
    target = at.ctx.rules.stage_ids.get(action.stage)
    if target is None or target == at.deal.crm_stage_id:
        return None  # not provisioned, or already there
    payload = {
        "crm_deal_id": at.deal.crm_deal_id,
        "pipeline_id": at.ctx.rules.pipeline_id,
        "stage_id": target,
    }
    return "move", payload


def deal_values(at: DealAt) -> dict[str, object]:
    """The `deal.*` placeholder values: title, amount and every template field (dates readable)."""
    state = at.state
    values: dict[str, object] = {"deal.title": state.title, "deal.amount": state.amount}
    for spec in at.ctx.rules.template.fields:
        values[f"deal.{spec.code}"] = _readable(
            at.ctx.rules, spec, field_value(at.ctx.rules, state, spec.code)
        )
    return values


def _readable(rules: FunnelRules, spec: FieldSpec, value: Any) -> Any:
    """A date as people write it, an enumeration as its option's name (the CRM may hold an id)."""
    if spec.type == "enum":
        return option_name(rules, spec, value)
    if spec.type not in DATE_TYPES:
        return value
    when = parse_when(value)
    if when is None:
        return None
    return when.strftime("%d.%m.%Y" if spec.type == "date" else "%d.%m.%Y %H:%M")


def deal_body(at: DealAt) -> dict[str, Any]:
    """The deal as an outgoing webhook carries it: ids, funnel and stage by template code, and the
    template's fields by code with the CRM's values (an enumeration's by option code, the same
    whichever CRM it came from)."""
    state = at.state
    rules = at.ctx.rules
    return {
        "id": state.crm_deal_id,
        "title": state.title,
        "amount": str(state.amount) if state.amount is not None else None,
        "responsible_id": state.responsible_id,
        "funnel": rules.template.key,
        "stage": at.stage_code,
        "fields": {
            spec.code: _webhook_value(rules, spec, field_value(rules, state, spec.code))
            for spec in rules.template.fields
        },
    }


def _webhook_value(rules: FunnelRules, spec: FieldSpec, value: Any) -> Any:
    if spec.type != "enum" or value in (None, ""):
        return value
    return option_code(rules, spec.code, value) or value
