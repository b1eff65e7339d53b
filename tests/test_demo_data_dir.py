"""The CLI beside a running demo: the line the demo's banner prints points `funnelsync` at the
demo's data folder, so `connections list` shows the demo's connections (not an empty var/)."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from pydantic import SecretStr

from app import migrate
from app.config import Settings
from app.connections import service as connections
from app.demo import DemoPorts, cli_export_line, demo_settings
from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate
from tests.support.cli import run_cli
from tests.support.db import open_sessions


def test_the_banners_export_line_shows_the_demos_connections(tmp_path: Path) -> None:
    operator = Settings(data_dir=tmp_path / "var", api_token=SecretStr("demo-test-token-12345"))
    demo = demo_settings(operator, DemoPorts())
    demo.data_dir.mkdir(parents=True)
    migrate.upgrade(demo.resolved_database_url)
    record = connections.build_record(
        demo,
        Bitrix24ConnectionCreate(
            name="demo-b24",
            crm="bitrix24",
            webhook_url="https://demo.bitrix24.test/rest/1/abc/",
            app_token=SecretStr("t"),
        ),
        None,
    )

    async def add() -> None:
        async with open_sessions(demo.resolved_database_url) as sessions, sessions.begin() as session:
            session.add(record)

    asyncio.run(add())

    line = cli_export_line(operator)
    words = shlex.split(line)
    assert words[0] == "export"
    env = dict(word.split("=", 1) for word in words[1:])
    listed = run_cli("connections", "list", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "demo-b24" in listed.stdout
    # Without it the CLI reads its own default folder, which the demo leaves alone.
    alone = run_cli(
        "connections", "list", "--json", env={"FUNNELSYNC_DATA_DIR": str(tmp_path / "var")}, cwd=tmp_path
    )
    assert alone.returncode == 0 and "demo-b24" not in alone.stdout
