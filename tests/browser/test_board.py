"""The funnel board in Chromium at 1366 px and at phone width: every stage on screen (won and lost
never behind an inner scroll), overdue deals first, one stage paged with its own link, the board
narrowed to a responsible user chosen by name (names from the Bitrix24 sandbox's user.get)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

from playwright.async_api import expect
from sqlalchemy import select

from app.db import utcnow
from app.deals.mirror import load_stage_index, mirror_snapshots
from app.funnels.models import Funnel
from connectors.base import DealSnapshot
from tests.browser.conftest import ON_THE_BROWSERS_LOOP, UIFactory
from tests.browser.test_layout import OVERFLOW
from tests.support.browser import PHONE
from tests.support.rules_bench import Bench

pytestmark = ON_THE_BROWSERS_LOOP

WIDE = {"width": 1366, "height": 900}
LATE = 3  # deals past the 2-minute SLA of "Новая заявка"
FRESH = 27  # deals that arrived just now: 30 in the column, more than the 25 a page shows
# Every column inside the window, and the board itself not scrolling sideways.
COLUMNS_ON_SCREEN = """() => {
  const board = document.querySelector('.board');
  const columns = [...board.querySelectorAll('.column')];
  return {inner: board.scrollWidth - board.clientWidth, count: columns.length,
          outside: columns.filter(c => c.getBoundingClientRect().right > window.innerWidth + 1).map(c => c.id)};
}"""


async def seed_column(live: Bench) -> int:
    """30 deals in "Новая заявка" (3 late, the newest arrivals last in the list), split between
    Павел Орлов (user 7) and Ирина Соколова (user 1); returns the funnel id."""
    now = utcnow()
    stage = live.stage_ids["NEW_REQUEST"]
    snapshots = [
        DealSnapshot(
            id=str(900 + n),
            pipeline_id=live.pipeline_id,
            stage_id=stage,
            title=f"{'Просрочена' if n < LATE else 'Заявка'} {n:02d}",
            updated_at=now - (timedelta(hours=3 - n) if n < LATE else timedelta(seconds=n)),
            amount=Decimal(1000 + n),
            currency="RUB",
            responsible_id="7" if n % 2 else "1",
        )
        for n in range(LATE + FRESH)
    ]
    async with live.p.sessions.begin() as session:
        index = await load_stage_index(session, live.p.record.id)
        await mirror_snapshots(session, live.p.record.id, snapshots, index, "reconcile")
    async with live.p.sessions() as session:
        funnel = await session.scalar(select(Funnel.id))
    assert funnel is not None
    return funnel


async def test_every_stage_fits_a_wide_screen_and_pages_on_its_own(
    live: Bench, ui_factory: UIFactory
) -> None:
    funnel = await seed_column(live)
    ui = await ui_factory(live.url, viewport=WIDE, label="wide")
    await ui.log_in()
    await ui.open(f"/funnels/{funnel}")
    layout = await ui.page.evaluate(COLUMNS_ON_SCREEN)
    assert layout["count"] == 11 and layout["inner"] <= 0 and layout["outside"] == [], layout
    await expect(ui.page.locator("#stage-WON")).to_be_in_viewport()
    await expect(ui.page.locator("#stage-LOST")).to_be_in_viewport()
    assert await ui.page.evaluate(OVERFLOW) <= 0

    column = ui.page.locator("#stage-NEW_REQUEST")
    cards = column.locator("li.deal")
    await expect(cards).to_have_count(25)
    # Overdue first: the three late deals lead, the one late longest on top.
    for n in range(LATE):
        await expect(cards.nth(n)).to_have_class(re.compile(r"\boverdue\b"))
        await expect(cards.nth(n)).to_contain_text(f"Просрочена {n:02d}")
    await expect(cards.nth(LATE)).not_to_have_class(re.compile(r"\boverdue\b"))
    await expect(cards.nth(0).locator("[data-age]")).to_contain_text("на стадии")
    await expect(cards.nth(0)).to_contain_text("1\u202f000.00\u00a0₽")
    await ui.shot("board")

    # Paging: this column's own link; the other columns stay as they were.
    await column.locator('[data-more="NEW_REQUEST"]').click()
    await expect(ui.page).to_have_url(re.compile(r"stage=NEW_REQUEST&page=2"))
    await expect(cards).to_have_count(5)
    await expect(column.locator("[data-pager]")).to_contain_text("Показаны 26–30 из 30")
    await expect(cards.nth(4)).to_contain_text("Заявка 03")  # the newest arrival, last
    await column.get_by_role("link", name="Предыдущие").click()
    await expect(cards).to_have_count(25)

    # Filter by responsible, chosen by name.
    await ui.page.get_by_label("Ответственный").select_option(label="Павел Орлов (15)")
    await ui.page.get_by_role("button", name="Показать").click()
    await expect(ui.page).to_have_url(re.compile(r"responsible=7"))
    await expect(column.locator('[data-deals="NEW_REQUEST"]')).to_have_text("15")
    await expect(cards).to_have_count(15)
    await expect(column.locator("[data-responsible]").first).to_have_text("Павел Орлов")
    await expect(column.locator('[data-responsible="1"]')).to_have_count(0)
    await ui.shot("board-filtered")


async def test_the_board_reads_at_phone_width(live: Bench, ui_factory: UIFactory) -> None:
    funnel = await seed_column(live)
    ui = await ui_factory(live.url, viewport=PHONE, label="phone")
    await ui.log_in()
    await ui.open(f"/funnels/{funnel}?responsible=1")
    assert await ui.page.evaluate(OVERFLOW) <= 0  # stages stack; nothing scrolls sideways
    await expect(ui.page.locator("#stage-LOST")).to_be_attached()
    column = ui.page.locator("#stage-NEW_REQUEST")
    await expect(column.locator("li.deal")).to_have_count(15)
    await expect(column.locator("li.deal").first).to_have_class(re.compile(r"\boverdue\b"))
    await ui.shot("board")
