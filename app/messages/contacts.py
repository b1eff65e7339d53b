"""The contacts of deals (phone, email, Telegram), cached with the mirror in DealContacts.

Read from the CRM through the connector's get_deal_contacts, batched (a page of deals per call),
only for deals whose cache is missing or older than the TTL, so a reminder usually needs no CRM
call at send time. Contacts are read when a message is about to go, not by reconcile: most deals
never get a message, and reading every touched deal's contacts would multiply the CRM calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.models import Connection
from app.db import dialect_insert
from app.deals.models import Deal
from app.messages.models import DealContacts
from app.messages.policy import policy_of
from connectors.base import ContactInfo, CRMConnector

DEFAULT_TTL = timedelta(hours=24)
PAGE = 50  # deals per get_deal_contacts call: the CRMs' batch size


def contacts_ttl(settings: Settings) -> timedelta:
    """FUNNELSYNC_CONTACTS_TTL_HOURS (24 by default)."""
    return timedelta(hours=settings.contacts_ttl_hours)


def to_json(contact: ContactInfo) -> dict[str, Any]:
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(contact).items()
    }


def from_json(data: Mapping[str, Any]) -> ContactInfo:
    return ContactInfo(
        id=str(data.get("id", "")),
        name=str(data.get("name") or ""),
        phones=tuple(data.get("phones") or ()),
        emails=tuple(data.get("emails") or ()),
        telegram=data.get("telegram"),
        is_primary=bool(data.get("is_primary")),
    )


def reachable(contacts: Sequence[ContactInfo]) -> dict[str, str]:
    """channel -> the first address the deal's contacts have for it, the primary contact first."""
    ordered = sorted(contacts, key=lambda c: not c.is_primary)
    found: dict[str, str] = {}
    for contact in ordered:
        candidates = {
            "sms": next((p for p in contact.phones if p.strip()), None),
            "email": next((e for e in contact.emails if e.strip()), None),
            "telegram": contact.telegram if contact.telegram and contact.telegram.strip() else None,
        }
        for channel, address in candidates.items():
            if address and channel not in found:
                found[channel] = address.strip()
    return found


async def cached(session: AsyncSession, deal_ids: Sequence[int]) -> dict[int, DealContacts]:
    if not deal_ids:
        return {}
    rows = await session.scalars(select(DealContacts).where(DealContacts.deal_id.in_(list(set(deal_ids)))))
    return {row.deal_id: row for row in rows}


def _prepare(record: Connection, connector: CRMConnector) -> None:
    """amoCRM has no Telegram field of its own: the policy names the contact field that holds it."""
    if hasattr(connector, "telegram_field"):
        connector.telegram_field = policy_of(record).telegram_field


async def refresh_contacts(
    sessions: async_sessionmaker[AsyncSession],
    record: Connection,
    connector: CRMConnector,
    deal_ids: Sequence[int],
    now: datetime,
) -> int:
    """Read the contacts of these deals (local ids) from the CRM and cache them; the deals read."""
    async with sessions() as session:
        crm_ids = dict(
            (
                await session.execute(
                    select(Deal.id, Deal.crm_deal_id).where(Deal.id.in_(list(set(deal_ids))))
                )
            ).all()
        )
    _prepare(record, connector)
    done = 0
    ids = list(crm_ids.items())
    for start in range(0, len(ids), PAGE):
        page = ids[start : start + PAGE]
        found = await connector.get_deal_contacts([crm_id for _, crm_id in page])
        rows = [
            {"deal_id": deal_id, "contacts": [to_json(c) for c in found.get(crm_id, [])], "fetched_at": now}
            for deal_id, crm_id in page
        ]
        async with sessions.begin() as session:
            # An upsert: reconcile and delivery may refresh the same deal at once.
            insert = dialect_insert(session, DealContacts).values(rows)
            await session.execute(
                insert.on_conflict_do_update(
                    index_elements=["deal_id"],
                    set_={"contacts": insert.excluded.contacts, "fetched_at": insert.excluded.fetched_at},
                )
            )
        done += len(page)
    return done


async def contacts_for(
    sessions: async_sessionmaker[AsyncSession],
    record: Connection,
    connector: CRMConnector | None,
    deal_ids: Sequence[int],
    *,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
) -> dict[int, list[ContactInfo]]:
    """The contacts of these deals: from the cache, after reading from the CRM the ones missing or
    older than `ttl` (when a connector is given). A deal without contacts maps to []."""
    async with sessions() as session:
        rows = await cached(session, deal_ids)
    stale = [d for d in set(deal_ids) if d not in rows or rows[d].fetched_at < now - ttl]
    if stale and connector is not None:
        await refresh_contacts(sessions, record, connector, stale, now)
        async with sessions() as session:
            rows = await cached(session, deal_ids)
    return {d: [from_json(c) for c in rows[d].contacts] if d in rows else [] for d in set(deal_ids)}
