"""Webhook mode end to end: `funnelsync bot telegram --webhook` registers the service's URL and
secret with the Telegram sandbox, which then POSTs each update to the running service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.bot.service import TEXTS
from app.bot.webhook import SECRET_HEADER
from app.main import create_app
from tests.bot.conftest import CHAT, TEMPLATE, cli_env, start_bench
from tests.support import web
from tests.support.channels import TelegramSandbox
from tests.support.cli import run_cli
from tests.support.matrix import each_crm_on_one_database
from tests.support.server import bound_socket, serve_asgi


@each_crm_on_one_database()
async def test_the_service_answers_telegrams_webhook(
    crm: str, database_url: str, tmp_path: Path, telegram: TelegramSandbox
) -> None:
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with start_bench(crm, database_url, tmp_path, telegram, public_url=url) as bench:
        with serve_asgi(create_app(bench.settings), sock=sock):
            registered = await asyncio.to_thread(
                run_cli, "bot", "telegram", "acme", TEMPLATE, "--webhook", env=cli_env(bench)
            )
            assert registered.returncode == 0, registered.stderr
            endpoint = f"{url}/bot/telegram/acme/{TEMPLATE}"
            async with web.async_client() as client:
                info = (await client.get(f"{telegram.url}/bot{telegram.token}/getWebhookInfo")).json()
                assert info["result"]["url"] == endpoint
                # A forged update (no secret, or a wrong one) is refused and changes nothing.
                forged = {
                    "update_id": 1,
                    "message": {"chat": {"id": CHAT, "type": "private"}, "text": "/start"},
                }
                assert (await client.post(endpoint, json=forged)).status_code == 403
                wrong = {SECRET_HEADER: "x" * 43}
                assert (await client.post(endpoint, json=forged, headers=wrong)).status_code == 403
            assert bench.replies() == []

            assert telegram.user_writes(CHAT, "/start", first_name="Анна")["webhook_status"] == 200
            assert bench.replies()[-1] == "Какой бюджет вы готовы выделить на решение задачи?"
            for press in ("budget:over_100k", "authority:yes"):
                assert telegram.user_presses(CHAT, press, first_name="Анна")["webhook_status"] == 200
            telegram.user_writes(CHAT, "Открыть второй офис", first_name="Анна")
            telegram.user_presses(CHAT, "timing:this_quarter", first_name="Анна")  # 2 + 2 + 1 = 5 >= 4
            assert bench.replies()[-1] == TEXTS["thanks"]["ru"]
            assert telegram.control("GET", "/_sandbox/stats")["calls"].get("getupdates") is None

        await bench.drain()
        [command] = await bench.deal_commands()
        deal = await bench.crm_deal(str(command.crm_result_id))
        assert deal["stage"] == await bench.stage_id("BANT")
        assert deal["title"] == f"Telegram: Анна (chat {CHAT})"
        assert deal["fields"]["need"] == "Открыть второй офис"
