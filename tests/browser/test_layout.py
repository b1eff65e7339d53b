"""Every page reads at 1280 px and at phone width without sideways scrolling, and the dashboard works
from the keyboard alone: skip link, visible focus, links and buttons reachable with Tab."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect
from sqlalchemy import select

from app.funnels.models import Funnel
from tests.browser.conftest import ON_THE_BROWSERS_LOOP, UIFactory
from tests.support.browser import DESKTOP, PHONE
from tests.support.rules_bench import Bench

pytestmark = ON_THE_BROWSERS_LOOP

OVERFLOW = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
# The innermost elements that stick out on the right: named in the failure message.
STICKING_OUT = """() => [...document.querySelectorAll("main *")]
  .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
  .filter(e => ![...e.children].some(c => c.getBoundingClientRect().right > document.documentElement.clientWidth + 1))
  .slice(0, 5).map(e => `${e.tagName.toLowerCase()}.${e.className} "${(e.textContent || "").trim().slice(0, 40)}"`)"""
FOCUSED = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const box = el.getBoundingClientRect();
  return {tag: el.tagName, id: el.id, text: (el.textContent || "").trim(), outline: style.outlineStyle,
          visible: box.width > 0 && box.height > 0 && box.left >= 0 && box.top >= 0};
}"""


async def seeded_paths(live: Bench) -> list[str]:
    deal = live.create(
        "Ремонт кондиционера с очень длинным названием сделки для узкого экрана", "NEW_REQUEST"
    )
    await live.cycle()
    live.move(deal, "QUALIFIED")
    await live.cycle()
    async with live.p.sessions() as session:
        funnel = await session.scalar(select(Funnel.id))
    local = (await live.deal(deal)).id
    return [
        "/",
        "/failures",
        f"/funnels/{funnel}",
        f"/funnels/{funnel}/analytics",
        f"/deals/{local}",
        "/templates",
        "/templates/general.typical",
    ]


@pytest.mark.slow(seconds=10)  # every page at two widths in Chromium
async def test_pages_fit_the_desktop_and_a_phone(live: Bench, ui_factory: UIFactory) -> None:
    paths = await seeded_paths(live)
    for viewport, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        ui = await ui_factory(live.url, viewport=viewport, label=label)
        await ui.log_in()
        for path in paths:
            await ui.open(path)
            await expect(ui.page.get_by_role("heading", level=1)).to_be_visible()
            overflow = await ui.page.evaluate(OVERFLOW)
            if overflow > 0:
                culprits = await ui.page.evaluate(STICKING_OUT)
                raise AssertionError(
                    f"{path} scrolls sideways by {overflow}px at {viewport['width']} px: {culprits}"
                )
            await expect(ui.page.get_by_role("navigation")).to_be_visible()
            await ui.shot(re.sub(r"\W+", "-", path).strip("-") or "overview")


async def focus_next(page: Page, text: str, limit: int = 40) -> dict[str, str | bool]:
    """Press Tab until the focused element's text is `text`; fail when it never comes."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        focused: dict[str, str | bool] = await page.evaluate(FOCUSED)
        if focused["text"] == text:
            return focused
    raise AssertionError(f"{text!r} is not reachable with Tab")


async def test_the_dashboard_works_from_the_keyboard(live: Bench, ui_factory: UIFactory) -> None:
    await seeded_paths(live)
    # Narrower than the board's eleven columns, so the board scrolls sideways.
    ui = await ui_factory(live.url, viewport={"width": 1024, "height": 900})
    await ui.log_in()  # typed into the autofocused token field, submitted with Enter

    await ui.page.keyboard.press("Tab")
    skip = await ui.page.evaluate(FOCUSED)
    assert skip["text"] == "Перейти к содержимому" and skip["visible"] and skip["outline"] == "solid"
    await ui.page.keyboard.press("Enter")
    assert (await ui.page.evaluate(FOCUSED))["id"] == "main"

    board = await focus_next(ui.page, "Доска")
    assert board["visible"] and board["outline"] == "solid"  # the focus ring is drawn
    await ui.page.keyboard.press("Enter")
    await expect(ui.page).to_have_url(re.compile(r"/funnels/\d+$"))
    # The board is wider than the screen: its scroller takes focus, and arrow keys scroll it.
    scroller = ui.page.locator(".board")
    await scroller.focus()
    assert (await ui.page.evaluate(FOCUSED))["outline"] == "solid"
    for _ in range(5):
        await ui.page.keyboard.press("ArrowRight")
    # Scrolling may be animated: wait for the condition (Playwright's timeout fails the test).
    await ui.page.wait_for_function("() => document.querySelector('.board').scrollLeft > 0", timeout=5000)

    await focus_next(ui.page, "Ремонт кондиционера с очень длинным названием сделки для узкого экрана")
    await ui.page.keyboard.press("Enter")
    await expect(ui.page.get_by_role("heading", level=2, name="История стадий")).to_be_visible()
    await ui.shot("deal-by-keyboard")
