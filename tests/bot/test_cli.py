"""`funnelsync bot telegram`: what it refuses (exit 2, a message, nothing written), and a real process
that polls, answers and stops cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.bot.models import BotConversation
from app.connections.models import Connection
from app.messages.accounts import set_account
from app.messages.models import ChannelAccount
from tests.bot.conftest import CHAT, TEMPLATE, BotBench, cli_env
from tests.support.channels import TelegramSandbox
from tests.support.cli import REPO, run_cli
from tests.support.crm import settings_for
from tests.support.db import open_sessions
from tests.support.matrix import on_sqlite_only

SQLITE_ONLY = on_sqlite_only()  # argument checks


async def _seed(database_url: str, tmp_path: Path, telegram: TelegramSandbox) -> dict[str, str]:
    """Connection "acme" with a telegram account but no funnel; "bare" with neither."""
    settings = settings_for(tmp_path, database_url)
    async with open_sessions(database_url) as sessions, sessions.begin() as session:
        for name in ("acme", "bare"):
            session.add(
                Connection(name=name, crm="bitrix24", base_url="http://x/", credentials_encrypted="x")
            )
        await session.flush()
        acme = await session.scalar(select(Connection).where(Connection.name == "acme"))
        assert acme is not None
        await set_account(
            session, settings, acme, "telegram", {"api_base_url": telegram.url}, {"bot_token": telegram.token}
        )
    return {
        "FUNNELSYNC_DATABASE_URL": database_url,
        "FUNNELSYNC_DATA_DIR": str(tmp_path),
        "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true",
        "FUNNELSYNC_SECRET_KEY": settings.secret_key.get_secret_value() if settings.secret_key else "",
    }


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", TEMPLATE], "no connection named 'nope'"),
        (["acme", "no.such_template"], "no template 'no.such_template' in the library"),
        (["acme", "general.typical"], "template 'general.typical' has no qualification questions"),
        (["bare", TEMPLATE], "connection 'bare' has no telegram account"),
        (["acme", TEMPLATE], f"template '{TEMPLATE}' is not provisioned on connection 'acme'"),
        (["acme", TEMPLATE, "--webhook"], f"template '{TEMPLATE}' is not provisioned on connection 'acme'"),
    ],
)
async def test_bad_input_exits_2_and_changes_nothing(
    args: list[str], message: str, database_url: str, tmp_path: Path, telegram: TelegramSandbox
) -> None:
    env = await _seed(database_url, tmp_path, telegram)
    result = await asyncio.to_thread(run_cli, "bot", "telegram", *args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split())
    assert telegram.calls() == {}  # Telegram was never called
    async with open_sessions(database_url) as sessions, sessions() as session:
        assert await session.scalar(select(func.count()).select_from(BotConversation)) == 0


def _poll_and_interrupt(bench: BotBench) -> tuple[int, str, str]:
    """Start the bot, have the user write /start, wait for its answer, press Ctrl-C."""
    env = {**os.environ, **cli_env(bench), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "app", "bot", "telegram", "acme", TEMPLATE, "--poll-seconds", "1"]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert "polling Telegram" in process.stdout.readline()  # up and polling
        bench.telegram.user_writes(CHAT, "/start")
        deadline = time.monotonic() + 60
        while len(bench.replies()) < 2 and time.monotonic() < deadline:  # answered at its next poll
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stdout, stderr


@pytest.mark.slow(seconds=20)  # a new interpreter importing the service, on a busy machine
@pytest.mark.parametrize(("crm", "backend"), [("bitrix24", "sqlite")], indirect=["backend"])
async def test_long_polling_process_answers_and_stops_on_ctrl_c(bench: BotBench) -> None:
    returncode, stdout, stderr = await asyncio.to_thread(_poll_and_interrupt, bench)
    assert returncode == 0, stderr
    assert "stopped" in stdout
    assert "Traceback" not in stderr
    assert bench.replies()[-1] == "Какой бюджет вы готовы выделить на решение задачи?"
    assert bench.telegram.calls()["sendmessage"] == 2  # answered once
    async with bench.sessions() as session:
        account = await session.scalar(select(ChannelAccount))
        assert account is not None
    assert account.update_offset is not None  # a restart starts after the /start it answered
