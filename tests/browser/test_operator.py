"""What an operator and a manager do in the dashboard, in a real browser, against live data: deals are
created and moved in the Bitrix24 sandbox, its webhooks reach FunnelSync, rules push tasks back."""

from __future__ import annotations

import re

from playwright.async_api import expect
from sqlalchemy import select

from app.connections.models import Connection
from app.deals.models import Deal
from app.funnels.models import Funnel
from app.outbox.delivery import RetrySettings, drain_connection
from app.outbox.models import OutboxCommand
from tests.browser.conftest import ON_THE_BROWSERS_LOOP, UIFactory
from tests.support.rules_bench import Bench

pytestmark = ON_THE_BROWSERS_LOOP

ONE_ATTEMPT = RetrySettings(max_attempts=1)
ENTRY_TASK = "Связаться с клиентом по новой заявке"  # the typical funnel's NEW_REQUEST task


async def local_id(live: Bench, crm_deal_id: str) -> int:
    return (await live.deal(crm_deal_id)).id


async def funnel_id(live: Bench) -> int:
    async with live.p.sessions() as session:
        found = await session.scalar(select(Funnel.id))
    assert found is not None
    return found


async def outbox_counts(live: Bench) -> dict[str, int]:
    async with live.p.sessions() as session:
        statuses = list(await session.scalars(select(OutboxCommand.status)))
    return {status: statuses.count(status) for status in set(statuses)}


async def test_log_in_and_read_a_connections_health(live: Bench, ui_factory: UIFactory) -> None:
    live.create("Заявка с сайта", "NEW_REQUEST")
    live.create("Звонок", "NEW_REQUEST")
    await live.process()
    queued = await outbox_counts(live)
    assert queued.get("pending", 0) >= 2  # an entry task per deal, at least

    ui = await ui_factory(live.url)
    await ui.open("/")
    await expect(ui.page).to_have_url(re.compile(r"/login"))  # nothing without a session
    await ui.type_token("not-the-token")
    await ui.page.keyboard.press("Enter")
    await expect(ui.page.get_by_role("alert")).to_contain_text("Неверный токен")
    await ui.shot("wrong-token")

    await ui.log_in()
    card = ui.page.locator("section.card", has=ui.page.get_by_role("heading", name=re.compile("bitrix24")))
    await expect(card.locator('[data-metric="deals"]')).to_have_text("2")
    await expect(card.locator('[data-events="processed"]')).to_have_text("2")
    await expect(card.locator('[data-events="failed"]')).to_have_text("0")
    await expect(card.locator('[data-outbox="pending"]')).to_have_text(str(queued["pending"]))
    await expect(card.locator('[data-metric="dead-letters"]')).to_have_text("0")
    await expect(card.locator("dt", has_text="Последний вебхук").locator("+ dd time")).to_be_visible()
    await expect(card.locator('[data-metric="token-expires"]')).to_contain_text("бессрочный")
    await expect(card.get_by_role("link", name="Доска")).to_be_visible()
    await ui.shot("overview")


async def test_open_a_funnel_board_and_a_deals_history(live: Bench, ui_factory: UIFactory) -> None:
    moved = live.create("Ремонт кондиционера", "NEW_REQUEST")
    await live.cycle()  # Bitrix24 webhooks carry only the id: each stage is seen when processed
    live.move(moved, "QUALIFIED")
    live.create("Новая заявка с сайта", "NEW_REQUEST")
    await live.cycle()

    ui = await ui_factory(live.url)
    await ui.log_in()
    await ui.page.locator("section.card").get_by_role("link", name="Доска").click()
    await expect(ui.page).to_have_url(re.compile(rf"/funnels/{await funnel_id(live)}$"))
    await expect(ui.page.locator('[data-deals="NEW_REQUEST"]')).to_have_text("1")
    await expect(ui.page.locator('[data-deals="QUALIFIED"]')).to_have_text("1")
    await expect(ui.page.locator('[data-deals="WON"]')).to_have_text("0")
    column = ui.page.locator("#stage-QUALIFIED")
    await expect(column.get_by_role("heading")).to_contain_text("Квалификация пройдена")
    await ui.shot("board")

    await column.get_by_role("link", name="Ремонт кондиционера").click()
    await expect(ui.page).to_have_url(re.compile(rf"/deals/{await local_id(live, moved)}$"))
    await expect(ui.page.get_by_role("heading", level=1)).to_have_text("Ремонт кондиционера")
    history = ui.page.locator("section[aria-labelledby=deal-history] tbody tr")
    await expect(history).to_have_count(2)
    await expect(history.nth(0).locator("td").nth(1)).to_contain_text("Новая заявка")
    await expect(history.nth(1).locator("td").nth(0)).to_contain_text("Новая заявка")
    await expect(history.nth(1).locator("td").nth(1)).to_contain_text("Квалификация пройдена")
    # The commands FunnelSync issued for this deal, delivered to the CRM.
    commands = await live.commands(moved)
    assert commands and all(c.status == "done" for c in commands)
    rows = ui.page.locator("section[aria-labelledby=deal-commands] tbody tr[id^=command-]")
    await expect(rows).to_have_count(len(commands))
    for command in commands:
        await expect(ui.page.locator(f"#command-{command.id}")).to_contain_text("выполнено")
        # Each delivered command keeps its attempt history, folded away under its row.
        history = ui.page.locator(f'[data-history-of="{command.id}"] [data-outcome="done"]')
        await expect(history).to_have_count(1)
    await ui.shot("deal")


async def test_retry_a_dead_command_and_see_it_delivered(live: Bench, ui_factory: UIFactory) -> None:
    deal = live.create("Заявка в праздник", "NEW_REQUEST")
    await live.process()
    [task] = await live.commands(deal, kind="task")
    # The CRM is down for longer than the retry budget: the entry task is dead-lettered.
    live.box.fault("http_503", count=1000)
    async with live.p.sessions() as session:
        record = await session.get(Connection, live.p.record.id)
    assert record is not None
    connector = live.p.sandbox.connector()
    try:
        result = await drain_connection(live.p.sessions, record, connector, retry=ONE_ATTEMPT)
    finally:
        await connector.aclose()
    live.p.sandbox.clear_faults()
    assert result.dead >= 1
    assert live.tasks(deal) == []

    ui = await ui_factory(live.url)
    await ui.log_in()
    await expect(ui.page.locator('[data-metric="dead-letters"]')).to_have_text(str(result.dead))
    await ui.page.get_by_role("link", name="Сбои").click()
    row = ui.page.locator(f"#command-{task.id}")
    await expect(row).to_contain_text("503")  # the CRM's own words
    await ui.shot("dead-letter")
    # By keyboard: focus the row's Retry button and press Enter.
    await row.get_by_role("button", name="Повторить").focus()
    await ui.page.keyboard.press("Enter")
    await expect(ui.page.get_by_role("status")).to_contain_text("Отправлено повторно: 1")
    await expect(ui.page.locator(f"#command-{task.id}")).to_have_count(0)  # no longer a failure

    await live.drain()  # the worker's next pass
    await ui.open(f"/deals/{await local_id(live, deal)}")
    await expect(ui.page.locator(f"#command-{task.id}")).to_contain_text("выполнено")
    assert [t["title"] for t in live.tasks(deal)] == [ENTRY_TASK]
    await ui.shot("delivered")


async def test_dry_run_a_provision_from_the_ui(live: Bench, ui_factory: UIFactory) -> None:
    ui = await ui_factory(live.url)
    await ui.log_in()
    await ui.page.get_by_role("link", name="Шаблоны").click()
    await ui.page.locator('a[href="/templates/auto_service.repair"]').click()
    await expect(ui.page.get_by_role("heading", level=1)).to_contain_text("Воронка для ремонта автомобилей")
    await ui.shot("template")
    writes = live.p.sandbox.writes()
    await ui.page.get_by_label("Создать воронку в подключении").select_option("bitrix24")
    await ui.page.get_by_role("button", name="Показать план").click()
    await expect(ui.page.get_by_role("heading", level=1)).to_contain_text("→ bitrix24")
    creates = ui.page.locator("tr.plan-create")
    assert await creates.count() > 5  # a new pipeline, its stages, its fields...
    await expect(creates.first).to_contain_text("воронка «Воронка для ремонта автомобилей»")  # Russian UI
    await expect(ui.page.get_by_role("button", name="Применить план")).to_be_visible()
    await ui.shot("plan")
    assert live.p.sandbox.writes() == writes  # a dry run writes nothing to the CRM
    async with live.p.sessions() as session:
        assert (
            await session.scalar(select(Funnel).where(Funnel.template_key == "auto_service.repair"))
        ) is None
        assert len(list(await session.scalars(select(Deal)))) == 0
