"""Take the README's screenshots from a running demo: `.venv/bin/python docs/screenshots.py`.

It starts `funnelsync demo` in this process (SQLite under a temporary data folder, both sandboxes on
free ports), lets the simulated sales team work for --warmup seconds so that SLAs run out and deals
are won and lost, then saves the main pages at 1280 px (and the overview at phone width) into
docs/screenshots/ with Debian's Chromium. Playwright is a dev dependency (`make install`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import Page, async_playwright
from pydantic import SecretStr

# Run as a script, only docs/ is on the path; the browser settings live in tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import Settings
from app.demo import DemoPorts, run_demo
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE
from tests.support.server import free_port

OUT = Path(__file__).parent / "screenshots"


async def capture(url: str, token: str) -> None:
    OUT.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for viewport, pages in ((DESKTOP, _DESKTOP_PAGES), (PHONE, _PHONE_PAGES)):
                context = await browser.new_context(viewport=viewport, locale="ru-RU")  # type: ignore[arg-type]
                page = await context.new_page()
                await page.goto(f"{url}/login?lang=en")
                await page.fill("#token", token)
                await page.keyboard.press("Enter")
                await page.wait_for_url(f"{url}/")
                for name, path in pages:
                    target = await _resolve(page, url, path)
                    await page.goto(target)
                    await page.screenshot(path=str(OUT / f"{name}.png"), full_page=name != "board")
                    print("saved", OUT / f"{name}.png", "from", target)
                await context.close()
        finally:
            await browser.close()


async def _resolve(page: Page, url: str, path: str) -> str:
    """Paths naming the first funnel or its first deal, read off the overview and board links."""
    if "{funnel}" in path or "{deal}" in path:
        await page.goto(f"{url}/")
        funnel = await page.locator('a[href^="/funnels/"]').first.get_attribute("href")
        assert funnel is not None
        if "{deal}" in path:
            await page.goto(url + funnel)
            deal = await page.locator('.deal a[href^="/deals/"]').last.get_attribute("href")
            assert deal is not None
            return url + deal
        return url + path.replace("/funnels/{funnel}", funnel)
    return url + path


_DESKTOP_PAGES = [
    ("overview", "/"),
    ("board", "/funnels/{funnel}"),
    ("deal", "/deals/{deal}"),
    ("analytics", "/funnels/{funnel}/analytics"),
    ("failures", "/failures"),
    ("messages", "/messages"),
    ("template", "/templates/general.typical"),
]
_PHONE_PAGES = [("overview-phone", "/")]


async def main(warmup: float) -> None:
    stop = asyncio.Event()
    ready: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    ports = DemoPorts(free_port(), free_port(), free_port())
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir), api_token=SecretStr("screenshot-token"))

        def announce(url: str, token: str, inboxes: dict[str, str]) -> None:
            ready.put_nowait((url, token))

        demo = asyncio.create_task(run_demo(settings, ports, duration=None, announce=announce, stop=stop))
        url, token = await ready.get()
        await asyncio.sleep(warmup)  # the simulated team's working time, so every page has data
        try:
            await capture(url, token)
        finally:
            stop.set()
            print(await demo)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup", type=float, default=150.0, help="seconds of simulation before capturing")
    asyncio.run(main(parser.parse_args().warmup))
