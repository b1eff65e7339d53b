"""In Chromium at desktop and phone width: error pages are dashboard pages in the visitor's language
(never raw JSON), /docs renders with no request leaving this service, the favicon loads, and the
provisioning plan reads in Russian with a hand-registered Bitrix24 webhook shown as in place ("=")
once its events arrive."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Route, expect

from app.main import create_app
from tests.browser.conftest import ON_THE_BROWSERS_LOOP, UIFactory
from tests.browser.test_layout import OVERFLOW
from tests.support.browser import DESKTOP, PHONE
from tests.support.crm import CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

pytestmark = ON_THE_BROWSERS_LOOP

WIDTHS = [pytest.param(DESKTOP, id="desktop"), pytest.param(PHONE, id="phone")]


@dataclass
class Site:
    url: str
    sandbox: CRMSandbox


@pytest.fixture
def site(database_url: str, tmp_path: Path) -> Iterator[Site]:
    settings = settings_for(tmp_path, database_url)
    with crm_sandbox("bitrix24") as sandbox:

        async def add() -> None:
            async with open_sessions(database_url) as sessions, sessions.begin() as session:
                session.add(sandbox.connection(settings, name="b24"))

        asyncio.run(add())
        with serve_asgi(create_app(settings)) as url:
            yield Site(url, sandbox)


@pytest.mark.parametrize("viewport", WIDTHS)
async def test_error_pages_docs_and_favicon(
    site: Site, ui_factory: UIFactory, viewport: dict[str, int]
) -> None:
    ui = await ui_factory(site.url, viewport)
    page = ui.page

    response = await page.goto(f"{site.url}/no/such/page")
    assert response is not None and response.status == 404
    await expect(page.locator("h1")).to_have_text("Не найдено")
    await expect(page.locator("[role=alert]")).to_have_text("Такой страницы нет.")
    assert await page.evaluate(OVERFLOW) <= 0
    await ui.shot("404-ru")

    await ui.log_in()
    response = await page.goto(f"{site.url}/funnels/abc")
    assert response is not None and response.status == 422
    await expect(page.locator("h1")).to_have_text("Неверные данные")
    await expect(page.locator("[role=alert]")).to_contain_text("funnel_id")
    await expect(page.locator("nav a[href='/templates']")).to_have_count(1)  # still in the dashboard
    await ui.shot("422-ru")

    response = await page.goto(f"{site.url}/templates/no.such?lang=en")
    assert response is not None and response.status == 404
    await expect(page.locator("[role=alert]")).to_have_text("There is no template with key 'no.such'.")
    assert "templates list" not in await page.locator("main").inner_text()  # no CLI advice

    icon = await page.request.get(f"{site.url}/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert await page.locator("link[rel=icon]").get_attribute("href") == "/favicon.svg"

    # Offline: any request for another origin is refused and remembered.
    elsewhere: list[str] = []

    async def local_only(route: Route) -> None:
        if route.request.url.startswith(site.url):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    await page.route("**/*", local_only)
    await page.goto(f"{site.url}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("FunnelSync", timeout=30_000)
    await expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert elsewhere == []
    await ui.shot("docs")


@pytest.mark.parametrize("viewport", WIDTHS)
async def test_the_plan_reads_in_russian(site: Site, ui_factory: UIFactory, viewport: dict[str, int]) -> None:
    # The outgoing webhook registered by hand in the portal, and a deal's event already arrived.
    site.sandbox.box.config.webhook_url = f"{site.url}/webhooks/bitrix24/b24"
    site.sandbox.create_deal("Заявка", "0", "NEW")
    site.sandbox.box.wait_for_stats(webhooks_sent=1)

    ui = await ui_factory(site.url, viewport)
    await ui.log_in()
    await ui.open("/templates/general.typical")
    await ui.page.get_by_role("button", name="Показать план").click()
    await expect(ui.page.locator("h1")).to_contain_text("План")

    pipeline = ui.page.locator("tr.plan-create").first
    await expect(pipeline).to_contain_text("воронка «")
    webhook = ui.page.locator("tr", has=ui.page.get_by_role("cell", name="вебхук", exact=True))
    await expect(webhook.locator("code")).to_have_text("=")
    await expect(webhook).to_contain_text("зарегистрирован вручную")
    assert await ui.page.locator("tr.plan-manual").count() == 0
    assert await ui.page.evaluate(OVERFLOW) <= 0
    await ui.shot("plan-ru")
