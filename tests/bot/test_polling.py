"""The bot over long polling, end to end: the Telegram sandbox plays the user, the CRM sandbox gets the
deal once the outbox drains."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.bot.polling import next_offset, poll_once
from app.bot.service import TEXTS, process_update
from app.messages.models import OptOut
from tests.bot.conftest import CHAT, BotBench
from tests.support.matrix import each_crm_on_one_database

Q_BUDGET = "Какой бюджет вы готовы выделить на решение задачи?"
Q_AUTHORITY = "Вы принимаете решение о покупке?"
Q_NEED = "Какую задачу вы хотите решить?"
Q_TIMING = "Когда планируете начать?"
REJECTED_CHAT = 515151
# What the CRM does is covered above; these are about the conversation: one CRM, both databases.
ONE_CRM = pytest.mark.parametrize("crm", ["bitrix24"])
IVAN = {
    "first_name": "Иван",
    "username": "ivan_p",
    "language_code": "ru",
}  # Telegram sends it with every update


async def _poll(bench: BotBench) -> int:
    bot = await bench.bot()
    try:
        return await poll_once(bench.sessions, await bench.target(), bot)
    finally:
        await bot.aclose()


@each_crm_on_one_database()
async def test_a_conversation_ends_in_a_deal_in_the_stage_its_score_earns(bench: BotBench) -> None:
    tg = bench.telegram
    tg.user_writes(CHAT, "/start", **IVAN)
    tg.user_writes(REJECTED_CHAT, "/start", first_name="Пётр", language_code="ru")
    assert await _poll(bench) == 2
    assert bench.replies() == [TEXTS["welcome"]["ru"], Q_BUDGET]
    assert bench.buttons() == ["budget:none", "budget:under_100k", "budget:over_100k"]

    tg.user_presses(CHAT, "budget:over_100k", **IVAN)  # score 2
    tg.user_writes(REJECTED_CHAT, "Бюджета пока нет")  # an option typed by its name: score 0
    await _poll(bench)
    tg.user_writes(CHAT, "Да", **IVAN)  # score 2
    tg.user_presses(REJECTED_CHAT, "authority:no")
    await _poll(bench)
    tg.user_writes(CHAT, "Автоматизировать продажи", **IVAN)
    tg.user_writes(REJECTED_CHAT, "Просто смотрю")
    await _poll(bench)
    tg.user_writes(CHAT, "когда-нибудь", **IVAN)  # fits no option: asked again, with the options
    await _poll(bench)
    assert bench.replies()[-1].startswith("Пожалуйста, выберите один из вариантов: В этом месяце")
    tg.user_presses(CHAT, "timing:this_month", **IVAN)  # score 2: 6 >= 4
    tg.user_presses(REJECTED_CHAT, "timing:later")  # 0 < 4
    await _poll(bench)

    assert bench.replies() == [
        TEXTS["welcome"]["ru"],
        Q_BUDGET,
        Q_AUTHORITY,
        Q_NEED,
        Q_TIMING,
        bench.replies()[5],
        TEXTS["thanks"]["ru"],
    ]
    assert len(tg.callback_answers()) == 4  # every press answered
    qualified, rejected = await bench.conversation(), await bench.conversation(REJECTED_CHAT)
    assert (qualified.outcome, rejected.outcome) == ("qualified", "rejected")

    await bench.drain()
    commands = {c.id: c for c in await bench.deal_commands()}
    assert set(commands) == {qualified.command_id, rejected.command_id}
    won = await bench.crm_deal(str(commands[qualified.command_id].crm_result_id))
    lost = await bench.crm_deal(str(commands[rejected.command_id].crm_result_id))
    assert won["stage"] == await bench.stage_id("BANT")
    assert lost["stage"] == await bench.stage_id("LOST")
    assert won["title"] == f"Telegram: Иван (@ivan_p) (chat {CHAT})"
    assert won["responsible"] == bench.supervisor
    assert won["fields"] == {
        "budget_range": "Более 100 000 ₽",
        "authority": "1" if bench.crm.crm == "bitrix24" else True,  # a Bitrix24 boolean reads 1/0
        "need": "Автоматизировать продажи",
        "timing": "В этом месяце",
    }
    assert lost["fields"]["budget_range"] == "Бюджета пока нет"


@ONE_CRM
async def test_a_restart_resumes_without_answering_twice(bench: BotBench) -> None:
    tg = bench.telegram
    tg.user_writes(CHAT, "/start", language_code="en")
    await _poll(bench)
    tg.user_presses(CHAT, "budget:under_100k")

    # The bot handles the press, then dies before it saves the offset.
    target, bot = await bench.target(), await bench.bot()
    try:
        pending = await bot.get_updates(offset=await next_offset(bench.sessions, target))
        assert await process_update(bench.sessions, target, bot, pending[0])
    finally:
        await bot.aclose()
    assert bench.replies()[-1] == "Do you make the purchase decision?"

    # Restarted: the same update comes again and is recognised; the conversation goes on.
    assert await _poll(bench) == 0
    assert bench.replies() == [
        TEXTS["welcome"]["en"],
        "What budget can you set aside for this?",
        "Do you make the purchase decision?",
    ]
    tg.user_presses(CHAT, "authority:yes")
    tg.user_presses(CHAT, "budget:none")  # a button of an answered question changes nothing
    await _poll(bench)
    assert bench.replies()[-1] == "What problem do you want to solve?"
    assert (await bench.conversation()).state["answers"] == {"budget": "under_100k", "authority": "yes"}
    assert await _poll(bench) == 0  # nothing pending: the offset was saved


@ONE_CRM
async def test_stop_opts_the_chat_out_and_start_starts_over(bench: BotBench) -> None:
    tg = bench.telegram
    tg.user_writes(CHAT, "/start")
    await _poll(bench)
    tg.user_presses(CHAT, "budget:none")
    tg.user_writes(CHAT, "/stop")
    await _poll(bench)
    assert bench.replies()[-1] == TEXTS["stopped"]["ru"]
    async with bench.sessions() as session:
        opt_outs = [(o.channel, o.address, str(o.source)) for o in await session.scalars(select(OptOut))]
    assert opt_outs == [("telegram", str(CHAT), "command")]

    tg.user_writes(CHAT, "/start")
    await _poll(bench)
    assert bench.replies()[-2:] == [TEXTS["welcome"]["ru"], Q_BUDGET]
    assert (await bench.conversation()).state["answers"] == {}
    assert await bench.deal_commands() == []
