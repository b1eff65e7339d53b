"""A company's own template through the dashboard in Chromium, at 1366 px and at phone width: upload a
broken file and read every problem, upload a good one and read the plan (nothing written), apply it
and find the funnel in the CRM and the template kept with the connection. The template list marks
nothing shipped as the company's own and keeps the upload one click away."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from app.connections.models import Connection
from app.funnels.models import Funnel
from app.library.cli import rekeyed
from app.library.service import OWN_TEMPLATES
from funnel_templates.loader import template_file
from tests.browser.conftest import ON_THE_BROWSERS_LOOP, UI, UIFactory
from tests.browser.test_layout import OVERFLOW, STICKING_OUT
from tests.support.rules_bench import Bench

pytestmark = ON_THE_BROWSERS_LOOP

WIDE = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def template_files(folder: Path, key: str) -> tuple[Path, Path]:
    """A copy of the typical funnel under `key`, and the same copy with two mistakes."""
    text = rekeyed(template_file("general.typical").read_text(encoding="utf-8"), "general.typical", key)
    good = folder / f"{key}.yaml"
    good.write_text(text.replace("ru: Лиды,", "ru: Наши лиды,", 1), encoding="utf-8")
    bad = folder / f"{key}-broken.yaml"
    bad_text = text.replace('color: "#d6eaff"', 'color: "#123456"', 1)
    bad.write_text(bad_text.replace("escalate_to: supervisor", "escalate_to: nobody", 1), encoding="utf-8")
    return good, bad


async def fits(ui: UI, what: str) -> None:
    overflow = await ui.page.evaluate(OVERFLOW)
    if overflow > 0:
        culprits = await ui.page.evaluate(STICKING_OUT)
        raise AssertionError(f"{what} scrolls sideways by {overflow}px: {culprits}")


async def upload(ui: UI, path: Path) -> None:
    await ui.page.get_by_label("Файл шаблона (.yaml, до 256 КБ)").set_input_files(str(path))
    await ui.page.get_by_label("Создать воронку в подключении").select_option("bitrix24")
    await ui.page.get_by_role("button", name="Проверить и показать план").click()


@pytest.mark.slow(seconds=10)  # the whole flow twice in Chromium
@pytest.mark.parametrize(
    ("viewport", "key"), [(WIDE, "acme.wide"), (PHONE, "acme.phone")], ids=["1366", "390"]
)
async def test_upload_check_plan_and_provision_an_own_template(
    live: Bench, ui_factory: UIFactory, tmp_path: Path, viewport: dict[str, int], key: str
) -> None:
    good, bad = template_files(tmp_path, key)
    ui = await ui_factory(live.url, viewport=viewport)
    await ui.log_in()
    await ui.open("/templates")
    await expect(ui.page.locator("[data-origin]")).to_have_count(0)  # every listed template ships
    await ui.page.get_by_role("link", name="Загрузить свой шаблон").click()
    await expect(ui.page.get_by_role("heading", level=1)).to_have_text("Свой шаблон воронки")
    await fits(ui, "the upload form")
    writes = live.p.sandbox.writes()

    await upload(ui, bad)
    problems = ui.page.locator("[data-problem]")
    await expect(problems).to_have_count(2)  # the field error and the rule error, in one pass
    await expect(ui.page.locator('[data-problem="stages.LEADS.color"]')).to_contain_text("#123456")
    await expect(ui.page.locator('[data-problem="stages.NEW_REQUEST.sla"]')).to_contain_text("nobody")
    await fits(ui, "the problems")
    await ui.shot("problems")

    await upload(ui, good)
    await expect(ui.page.get_by_role("heading", level=1)).to_contain_text("→ bitrix24")
    await expect(ui.page.locator("tr.plan-create").first).to_be_visible()
    assert await ui.page.locator("tr.plan-create").count() > 5
    await expect(ui.page.locator("main")).to_contain_text("Наши лиды")
    await fits(ui, "the plan")
    await ui.shot("plan")
    assert live.p.sandbox.writes() == writes  # the plan alone writes nothing

    await ui.page.get_by_role("button", name="Применить план").click()
    await expect(ui.page.get_by_role("status")).to_contain_text("План применён.")
    await ui.shot("applied")
    assert live.p.sandbox.writes() > writes
    async with live.p.sessions() as session:
        assert await session.scalar(select(Funnel.id).where(Funnel.template_key == key)) is not None
        record = await session.scalar(select(Connection).where(Connection.name == "bitrix24"))
    assert record is not None and key in record.settings[OWN_TEMPLATES]
    assert "Наши лиды" in record.settings[OWN_TEMPLATES][key]
