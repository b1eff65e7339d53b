"""The loss reason the mirror keeps in `deals.loss_reason` (app/deals/loss_reasons.py): derived from
the snapshot's fields on every write, and again for a funnel's deals when provisioning maps the
field that carries it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.deals.loss_reasons import loss_reason_of
from app.deals.mirror import load_stage_index, mirror_snapshots
from app.deals.models import Deal
from app.funnels.repository import DatabaseMappingStore
from connectors.base import DealSnapshot
from funnel_templates.loader import library
from funnel_templates.schema import LOSS_REASON_FIELD
from tests.support.db import add_funnel, open_sessions

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TEMPLATE = library()["general.typical"]


@pytest.mark.parametrize(
    ("fields", "field_ids", "reason"),
    [
        ({}, (), None),
        ({"loss_reason_id": 143, "loss_reason": "price"}, (), "143"),  # amoCRM's native reason first
        ({"loss_reason": "price", "777": "41"}, ("777",), "price"),  # then the template's own code
        ({"777": "41"}, ("777",), "41"),  # then a field mapped to carry it
        ({"777": "41"}, (), None),  # an unmapped field is just a field
        ({"loss_reason": "", "777": ["41", "42"]}, ("777",), "41"),  # empty skipped; a list's first
        ({"loss_reason": [], "778": 7}, ("777", "778"), "7"),
        ({"loss_reason": None}, (), None),
        ({"loss_reason": "x" * 300}, (), "x" * 255),  # cut to the column
    ],
)
def test_where_the_reason_is_read(
    fields: dict[str, Any], field_ids: tuple[str, ...], reason: str | None
) -> None:
    assert loss_reason_of(fields, field_ids) == reason


async def _reasons(sessions: async_sessionmaker[AsyncSession]) -> dict[str, str | None]:
    async with sessions() as session:
        rows = await session.execute(select(Deal.crm_deal_id, Deal.loss_reason))
        return {key: value for key, value in rows}


async def _mirror(
    sessions: async_sessionmaker[AsyncSession], connection_id: int, *snapshots: DealSnapshot
) -> None:
    async with sessions.begin() as session:
        index = await load_stage_index(session, connection_id)
        await mirror_snapshots(session, connection_id, list(snapshots), index, "webhook")


def _lost(deal: str, at: datetime, **fields: Any) -> DealSnapshot:
    return DealSnapshot(
        id=deal, pipeline_id="5", stage_id="C5:LOSE", title=deal, updated_at=at, fields=fields
    )


async def test_the_mirror_keeps_it_and_mapping_the_field_fills_it_in(database_url: str) -> None:
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            connection, _ = await add_funnel(
                session, [("NEW", "process"), ("LOSE", "failure")], template_key=TEMPLATE.key
            )
        await _mirror(
            sessions,
            connection.id,
            _lost("1", T0, loss_reason="price"),
            _lost("2", T0, **{"777": "41"}),  # the CRM's field, not mapped yet
            DealSnapshot(id="3", pipeline_id="5", stage_id="C5:NEW", title="3", updated_at=T0),
        )
        assert await _reasons(sessions) == {"1": "price", "2": None, "3": None}

        # Provisioning maps field 777 to carry the reason: deals already mirrored are read again.
        store = DatabaseMappingStore(sessions, connection.id, TEMPLATE)
        await store.fields([(LOSS_REASON_FIELD, "777", "UF_CRM_LOSS")])
        assert await _reasons(sessions) == {"1": "price", "2": "41", "3": None}
        # A re-run that maps the same field leaves the deals alone (it would re-read every deal).
        async with sessions.begin() as session:
            await session.execute(update(Deal).where(Deal.crm_deal_id == "3").values(loss_reason="kept"))
        await store.fields([(LOSS_REASON_FIELD, "777", "UF_CRM_LOSS")])
        assert (await _reasons(sessions))["3"] == "kept"
        await store.fields([(LOSS_REASON_FIELD, "778", "UF_CRM_LOSS_2")])  # another field: read again
        assert await _reasons(sessions) == {"1": "price", "2": None, "3": None}
        await store.fields([(LOSS_REASON_FIELD, "777", "UF_CRM_LOSS")])
        assert await _reasons(sessions) == {"1": "price", "2": "41", "3": None}

        # Later snapshots keep it current, the field mapping included.
        later = T0 + timedelta(minutes=5)
        await _mirror(sessions, connection.id, _lost("2", later, **{"777": "42"}), _lost("1", later))
        assert await _reasons(sessions) == {"1": None, "2": "42", "3": None}
