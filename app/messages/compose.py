"""The text a client gets: the action's message in the connection's language, its placeholders
filled from the deal, the contact and the policy, and the opt-out line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.deals.models import Deal
from app.messages.policy import MessagingPolicy
from app.rules.engine import field_value, option_name, parse_when
from app.rules.service import FunnelCache, deal_state
from connectors.base import ContactInfo
from funnel_templates.placeholders import render

OPT_OUT_LINE = {"ru": "Отписаться от сообщений: {url}", "en": "Stop these messages: {url}"}


@dataclass(frozen=True)
class Composed:
    text: str
    subject: str | None


def readable_when(at: datetime | None, policy: MessagingPolicy, *, with_time: bool) -> str | None:
    """A date field as the client reads it: on the connection's wall clock, in its language's usual
    numeric form (the CRMs report unix seconds or ISO 8601, which no client should see)."""
    if at is None:
        return None
    # A date field has no time of day to move between zones: it is read as written.
    local = at.astimezone(policy.zone) if with_time else at
    day = local.strftime("%d.%m.%Y") if policy.language == "ru" else local.strftime("%Y-%m-%d")
    return f"{day} {local:%H:%M}" if with_time else day


def _amount(value: Decimal | None) -> str | None:
    if value is None:
        return None
    return f"{value:,.2f}".replace(",", " ")


def contact_with(contacts: list[ContactInfo], channel: str, address: str) -> ContactInfo | None:
    """The contact the address belongs to (its name goes into {contact.name})."""
    for contact in contacts:
        owned = {"sms": contact.phones, "email": contact.emails, "telegram": (contact.telegram or "",)}
        if address in (a.strip() for a in owned.get(channel, ())):
            return contact
    return contacts[0] if contacts else None


async def placeholder_values(
    session: AsyncSession,
    funnels: FunnelCache,
    deal: Deal | None,
    contact: ContactInfo | None,
    policy: MessagingPolicy,
    optout_url: str,
    manager: str | None = None,
) -> dict[str, object]:
    """Every placeholder FunnelSync knows a value for; a missing one makes `render` refuse.
    `manager`: the responsible user's name, when the CRM told it."""
    values: dict[str, object] = {
        "optout_url": optout_url,
        "company.name": policy.company_name,
        "manager.name": manager,
    }
    if contact is not None:
        values["contact.name"] = contact.name
    if deal is None:
        return values
    values.update({"deal.title": deal.title, "deal.amount": _amount(deal.amount)})
    context = await funnels.get(session, deal.funnel_id) if deal.funnel_id is not None else None
    if context is not None:
        state = deal_state(deal)
        for spec in context.rules.template.fields:
            value = field_value(context.rules, state, spec.code)
            if spec.type in ("date", "datetime"):
                value = readable_when(parse_when(value), policy, with_time=spec.type == "datetime")
            elif spec.type == "enum":
                value = option_name(context.rules, spec, value, policy.language)
            values[f"deal.{spec.code}"] = None if value in (None, "") else str(value)
    return values


def compose(
    payload: Mapping[str, Any], language: str, values: Mapping[str, object], *, with_opt_out: bool
) -> Composed:
    """The rendered text and subject; MissingPlaceholderValues when a value is missing. The opt-out
    line is added unless the text already carries {optout_url}."""
    message = payload["message"][language]
    text = render(message, values)
    if with_opt_out and "{optout_url}" not in message:
        text = f"{text}\n\n{OPT_OUT_LINE[language].format(url=values['optout_url'])}"
    subject = payload.get("subject")
    return Composed(text, render(subject[language], values) if subject else None)
