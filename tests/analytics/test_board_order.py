"""The board column's order across its pages, on both databases: the deals with an entry time
longest in the stage first (ties by id), then those without one by id, each page exactly the next
`cap` of that order however the pages fall across the two kinds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.board import BoardQuery, board_view
from app.analytics.funnels import load_funnel
from app.deals.models import Deal
from tests.support.db import add_funnel, open_sessions

T0 = datetime(2026, 5, 1, 9, tzinfo=UTC)
# deal number -> minutes after T0 it entered the stage (None: no entry time)
ENTERED = {1: 30, 2: None, 3: 5, 4: 5, 5: None, 6: 60, 7: 0, 8: None}
ORDER = [7, 3, 4, 1, 6, 2, 5, 8]


async def _seed(session: AsyncSession) -> tuple[int, dict[int, int]]:
    connection, funnel = await add_funnel(session, [("NEW", "process")], template_key="hand.board")
    ids = {}
    for number, minutes in ENTERED.items():
        deal = Deal(
            connection_id=connection.id, crm_deal_id=str(number), funnel_id=funnel.id, crm_pipeline_id="5",
            crm_stage_id="C5:NEW", managed=True, title=str(number), fields={}, crm_updated_at=T0,
            stage_entered_at=None if minutes is None else T0 + timedelta(minutes=minutes),
        )  # fmt: skip
        session.add(deal)
        await session.flush()
        ids[number] = deal.id
    stage_id = (await load_funnel(session, funnel.id)).stages[0].id
    for number in ENTERED:
        deal = await session.get(Deal, ids[number])
        assert deal is not None
        deal.stage_id = stage_id
    return funnel.id, ids


@pytest.mark.parametrize("cap", [1, 2, 3, 5, 8])
async def test_each_page_is_the_next_deals_in_column_order(database_url: str, cap: int) -> None:
    async with open_sessions(database_url) as sessions:
        async with sessions.begin() as session:
            funnel_id, ids = await _seed(session)
        listed: list[int] = []
        async with sessions() as session:
            ctx = await load_funnel(session, funnel_id)
            pages = -(-len(ORDER) // cap)
            for page in range(1, pages + 1):
                view = await board_view(
                    session, ctx, cap=cap, now=T0, query=BoardQuery(stage="NEW", page=page)
                )
                column = view.board.columns[0]
                assert (column.deals, view.columns["NEW"].pages) == (len(ORDER), pages)
                listed += [item.id for item in column.items]
    assert listed == [ids[number] for number in ORDER]
