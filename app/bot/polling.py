"""Long polling: getUpdates from the offset stored in the channel account, each update handled, then
the offset saved, until asked to stop.

The offset is saved after each batch; an update of a batch cut short (a crash, a kill) comes again
after a restart and is recognised by its conversation (app.bot.service), so nothing is answered twice.
A stop request is honoured between batches: a batch being handled is finished first, and a long poll
waiting for updates is simply abandoned (it confirmed nothing).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bot.service import BotTarget, process_update, telegram_account
from connectors.channels.base import TemporaryChannelError
from connectors.channels.telegram_bot import TelegramBot

log = logging.getLogger("funnelsync.bot")

POLL_SECONDS = 25  # Telegram holds a getUpdates this long when nothing arrives
# After a failed poll (network, Telegram 5xx, flood control): wait this long before the next one.
RETRY_PAUSE_SECONDS = 5.0

Sessions = async_sessionmaker[AsyncSession]


async def next_offset(sessions: Sessions, target: BotTarget) -> int | None:
    """The getUpdates offset: one past the last update handled (None before the first)."""
    async with sessions() as session:
        handled = (await telegram_account(session, target.connection_id)).update_offset
    return None if handled is None else handled + 1


async def handle_batch(
    sessions: Sessions, target: BotTarget, bot: TelegramBot, updates: Sequence[dict[str, Any]]
) -> int:
    """Handle `updates` in order, then save the last update id; how many changed a conversation."""
    changed = 0
    for update in updates:
        changed += await process_update(sessions, target, bot, update)
    ids = [u["update_id"] for u in updates if isinstance(u.get("update_id"), int)]
    if ids:
        async with sessions.begin() as session:
            account = await telegram_account(session, target.connection_id)
            account.update_offset = max([*ids, account.update_offset or 0])
    return changed


async def poll_once(sessions: Sessions, target: BotTarget, bot: TelegramBot, *, poll_seconds: int = 0) -> int:
    """One getUpdates (waiting up to `poll_seconds` for something to arrive) and its batch."""
    updates = await bot.get_updates(offset=await next_offset(sessions, target), timeout=poll_seconds)
    return await handle_batch(sessions, target, bot, updates)


async def run_polling(
    sessions: Sessions,
    target: BotTarget,
    bot: TelegramBot,
    stop: asyncio.Event,
    *,
    poll_seconds: int = POLL_SECONDS,
) -> None:
    """Poll until `stop` is set. getUpdates is refused while a webhook is set, so any webhook is
    removed first (its pending updates stay, for this poll to fetch)."""
    await bot.delete_webhook()
    while not stop.is_set():
        offset = await next_offset(sessions, target)
        poll = asyncio.ensure_future(bot.get_updates(offset=offset, timeout=poll_seconds))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not poll.done():
            poll.cancel()
            with suppress(asyncio.CancelledError):
                await poll
            return
        try:
            updates = poll.result()
        except TemporaryChannelError as exc:
            log.warning("telegram bot: getUpdates failed: %s; polling again shortly", exc.provider_text)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_PAUSE_SECONDS)
            continue
        await handle_batch(sessions, target, bot, updates)


def stop_on_signals() -> asyncio.Event:
    """An event set by Ctrl-C (SIGINT) or SIGTERM, for run_polling in the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop
