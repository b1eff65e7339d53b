"""`funnelsync sync CONNECTION [--full]` against each sandbox, as a user runs it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.crm import APP_TOKEN, CRMSandbox, crm_sandbox


@pytest.fixture(params=["bitrix24", "amocrm"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[CRMSandbox]:
    with crm_sandbox(request.param) as box:
        yield box


def add_connection(box: CRMSandbox, env: dict[str, str]) -> None:
    if box.crm == "bitrix24":
        args = ["--webhook-url", box.box.webhook_url, "--app-token", APP_TOKEN]
    else:
        args = [
            "--subdomain",
            box.box.config.subdomain,
            "--token",
            box.box.config.token,
            "--base-url",
            box.url,
        ]
    result = run_cli("connections", "add", "crm", "--crm", box.crm, *args, env=env)
    assert result.returncode == 0, result.stderr


def seed(box: CRMSandbox, count: int) -> None:
    if box.crm == "bitrix24":
        box.box.control("POST", "/_sandbox/deals/bulk", {"count": count})
    else:
        box.box.control("POST", "/_sandbox/deals/bulk", {"count": count, "notify": False})


def test_sync_mirrors_what_the_crm_has(sandbox: CRMSandbox, tmp_path: Path) -> None:
    env = {"FUNNELSYNC_DATA_DIR": str(tmp_path / "var"), "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true"}
    add_connection(sandbox, env)
    seed(sandbox, 30)
    first = run_cli("sync", "crm", "--json", env=env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["full"] and summary["deals_seen"] == 30 and summary["created"] == 30

    seed(sandbox, 5)
    second = json.loads(run_cli("sync", "crm", "--json", env=env).stdout)
    assert not second["full"] and second["created"] == 5  # incremental, from the cursor

    text = run_cli("sync", "crm", "--full", env=env)
    assert text.returncode == 0 and "full sync: 35 deals seen, 0 new" in text.stdout


def test_sync_unknown_connection_exits_2(tmp_path: Path) -> None:
    result = run_cli("sync", "ghost", env={"FUNNELSYNC_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "no connection named 'ghost'" in result.stderr
