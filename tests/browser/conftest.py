"""Browser tests: Playwright for Python driving Debian's Chromium against FunnelSync served on a real
port, with a Bitrix24 sandbox posting its webhooks to it.

Chromium is `/usr/bin/chromium` (or FUNNELSYNC_CHROMIUM); when it is missing the setup installs the
`chromium` package with apt, and fails with the reason when it cannot. Playwright's own browser
download is never used. Every test leaves screenshots under artifacts/browser/ (or
FUNNELSYNC_ARTIFACTS_DIR/browser), the last one taken at teardown whatever the outcome.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.support.apt import PackageUnavailable, apt_install
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP
from tests.support.live import live_funnel
from tests.support.rules_bench import Bench

ARTIFACTS = (
    Path(os.environ.get("FUNNELSYNC_ARTIFACTS_DIR", Path(__file__).parents[2] / "artifacts")) / "browser"
)
TOKEN = "test-token-1234567890"  # tests.support.crm.settings_for
# For each browser test module: the event loop the shared browser lives on (see `browser`).
ON_THE_BROWSERS_LOOP = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="session")
def chromium() -> str:
    if not CHROMIUM.exists():
        try:
            apt_install("chromium", "the browser tests drive Debian's Chromium")
        except PackageUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is still missing after installing the chromium package", pytrace=False)
    return str(CHROMIUM)


# One Playwright driver and one Chromium per test process, shared by its browser tests (each test
# gets fresh browser contexts): starting the two costs about 1.5 s of CPU, more than many of the
# tests themselves. So the browser tests and their async fixtures run on the session's event loop
# (`pytestmark` in each module, `loop_scope` below), which the browser lives on.
@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class UI:
    """One browser page on FunnelSync, with the screenshots it leaves behind."""

    page: Page
    base_url: str
    name: str
    shots: list[Path] = field(default_factory=list)

    async def open(self, path: str) -> None:
        await self.page.goto(self.base_url + path)

    async def shot(self, label: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target = ARTIFACTS / f"{self.name}-{label}.png"
        await self.page.screenshot(path=str(target), full_page=True)
        self.shots.append(target)
        return target

    async def type_token(self, token: str) -> None:
        """Type into the login form's token field, which takes the focus by itself (autofocus)."""
        await expect(self.page.locator("#token")).to_be_focused()
        await self.page.keyboard.type(token)

    async def log_in(self, token: str = TOKEN) -> None:
        """Log in through the form, by keyboard: the token field has focus when the page opens."""
        await self.open("/login")
        await self.type_token(token)
        await self.page.keyboard.press("Enter")
        await self.page.wait_for_url(re.compile(r"/(\?.*)?$"))


UIFactory = Callable[..., Awaitable[UI]]


@pytest_asyncio.fixture(loop_scope="session")
async def ui_factory(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[UIFactory]:
    made: list[UI] = []
    test_name = re.sub(r"[^\w.-]+", "_", request.node.name).strip("_")

    async def make(base_url: str, viewport: dict[str, int] = DESKTOP, label: str = "") -> UI:
        context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        page = await context.new_page()
        ui = UI(page, base_url.rstrip("/"), test_name + (f"-{label}" if label else ""))
        made.append(ui)
        return ui

    yield make
    for ui in made:
        if not ui.page.is_closed():
            await ui.shot("final")
            await ui.page.context.close()


@pytest.fixture
def backend() -> str:
    """One database for the browser tests: the pages read through the same services on both, and
    tests/dashboard renders every page on both; a browser adds layout and interaction, not SQL."""
    return "sqlite"


@pytest_asyncio.fixture(loop_scope="session")
async def live(database_url: str, tmp_path: Path) -> AsyncIterator[Bench]:
    """The typical funnel provisioned into a Bitrix24 sandbox, FunnelSync serving the dashboard."""
    async with live_funnel(
        "bitrix24", database_url, tmp_path, connection_settings={"supervisor_id": "1"}
    ) as funnel:
        yield Bench.extend(funnel)
