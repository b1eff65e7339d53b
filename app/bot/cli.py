"""`funnelsync bot telegram CONN TEMPLATE [--webhook]`: run the qualification bot."""

from __future__ import annotations

from typing import Annotated

import typer

from app.bot.polling import POLL_SECONDS, run_polling, stop_on_signals
from app.bot.service import BotSetupError, BotTarget, load_target, open_bot, telegram_account
from app.bot.webhook import register_webhook
from app.config import Settings
from app.console import fail, out
from app.messages.accounts import ChannelAddressRefused
from app.runtime import Sessions, run_with_database
from connectors.channels.base import ChannelError

bot_cli = typer.Typer(help="Chat bots that qualify leads and create their deals.", no_args_is_help=True)


@bot_cli.command("telegram")
def telegram_command(
    connection: Annotated[str, typer.Argument(help="Connection with a telegram channel account.")],
    template: Annotated[str, typer.Argument(help="Library template with qualification questions.")],
    webhook: Annotated[
        bool,
        typer.Option(
            "--webhook",
            help="Point Telegram at {FUNNELSYNC_PUBLIC_URL}/bot/telegram/CONN/TEMPLATE and exit; "
            "the service then answers.",
        ),
    ] = False,
    poll_seconds: Annotated[
        int, typer.Option(min=1, max=50, help="How long one getUpdates waits for messages.")
    ] = POLL_SECONDS,
) -> None:
    """Ask the template's qualification questions in Telegram and create each lead's deal in the CRM.

    Without --webhook: long polling until Ctrl-C (a restart carries on where it stopped)."""

    async def work(settings: Settings, sessions: Sessions) -> None:
        async with sessions() as session:
            try:
                target = await load_target(session, connection, template)
            except BotSetupError as exc:
                fail(str(exc))
        try:
            if webhook:
                url = await register_webhook(settings, sessions, target)
                out.print(f"Telegram now sends the bot's updates to {url}; `funnelsync serve` answers them")
            else:
                await _poll(settings, sessions, target, poll_seconds)
        except ChannelAddressRefused as exc:
            fail(str(exc))
        except ChannelError as exc:
            fail(f"Telegram refused: {exc.provider_text}", code=1)

    run_with_database(work)


async def _poll(settings: Settings, sessions: Sessions, target: BotTarget, poll_seconds: int) -> None:
    async with sessions() as session:
        account = await telegram_account(session, target.connection_id)
    bot = await open_bot(settings, account)
    try:
        out.print(
            f"bot for {target.template.key} on {target.connection_name}: polling Telegram (Ctrl-C stops)"
        )
        await run_polling(sessions, target, bot, stop_on_signals(), poll_seconds=poll_seconds)
    finally:
        await bot.aclose()
    out.print("stopped")
