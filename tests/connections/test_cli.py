"""`funnelsync connections ...` and `funnelsync provision` as a user runs them, against sandboxes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.crm import APP_TOKEN, FAST_RETRY_ENV, CRMSandbox, crm_sandbox


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "FUNNELSYNC_DATA_DIR": str(tmp_path / "var"),
        "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true",  # the sandboxes run on 127.0.0.1
        "FUNNELSYNC_PUBLIC_URL": "http://127.0.0.1:9",
        **FAST_RETRY_ENV,
    }


@pytest.fixture
def b24() -> Iterator[CRMSandbox]:
    with crm_sandbox("bitrix24") as box:
        yield box


@pytest.fixture
def amo() -> Iterator[CRMSandbox]:
    with crm_sandbox("amocrm") as box:
        yield box


def add_b24(env: dict[str, str], box: CRMSandbox, name: str = "b24") -> None:
    result = run_cli(
        "connections", "add", name, "--crm", "bitrix24", "--webhook-url", box.box.webhook_url,
        "--app-token", APP_TOKEN, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_add_list_check_and_secrets_stay_secret(env: dict[str, str], b24: CRMSandbox, tmp_path: Path) -> None:
    add_b24(env, b24)
    listed = run_cli("connections", "list", "--json", env=env)
    assert listed.returncode == 0
    [row] = json.loads(listed.stdout)
    assert row["name"] == "b24" and row["crm"] == "bitrix24" and row["auth"] == "webhook"
    code = b24.box.config.webhook_code
    for output in (listed.stdout, run_cli("connections", "list", env=env).stdout):
        assert code not in output and APP_TOKEN not in output
    # At rest the credentials are a Fernet token, not the webhook URL.
    with sqlite3.connect(tmp_path / "var" / "funnelsync.db") as db:
        [(stored,)] = db.execute("SELECT credentials_encrypted FROM connections").fetchall()
    assert code not in stored and APP_TOKEN not in stored
    key_file = tmp_path / "var" / "secret.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

    check = run_cli("connections", "check", "b24", env=env)
    assert check.returncode == 0, check.stderr
    assert "ok b24" in check.stdout and "crm, task" in check.stdout


def test_check_reports_a_bad_token_in_plain_words(env: dict[str, str], amo: CRMSandbox) -> None:
    result = run_cli(
        "connections", "add", "amo", "--crm", "amocrm", "--subdomain", amo.box.config.subdomain,
        "--token", "not-the-token", "--base-url", amo.url, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    check = run_cli("connections", "check", "amo", env=env)
    assert check.returncode == 1
    assert "rejected the credentials" in check.stdout and "long-lived token" in check.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--crm", "pipedrive"], "--crm must be bitrix24 or amocrm"),
        (["--crm", "bitrix24", "--webhook-url", "ftp://x/rest/1/a/"], "must be an http(s) URL"),
        (
            ["--crm", "bitrix24", "--webhook-url", "https://x.bitrix24.ru/hook"],
            "must look like https://{portal}/rest/",
        ),
        (["--crm", "bitrix24"], "Bitrix24 needs webhook_url"),
        (["--crm", "amocrm", "--subdomain", "acme"], "amoCRM needs token"),
        (["--crm", "amocrm", "--subdomain", "Not Valid", "--token", "t"], "subdomain must be"),
        (
            ["--crm", "amocrm", "--subdomain", "acme", "--token", "t", "--webhook-url", "https://x/"],
            "not used by amocrm",
        ),
    ],
)
def test_bad_input_exits_2_and_stores_nothing(env: dict[str, str], args: list[str], message: str) -> None:
    result = run_cli("connections", "add", "bad", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    listed = run_cli("connections", "list", "--json", env=env)
    assert json.loads(listed.stdout) == []


def test_duplicate_name_exits_2(env: dict[str, str], b24: CRMSandbox) -> None:
    add_b24(env, b24)
    again = run_cli(
        "connections", "add", "b24", "--crm", "bitrix24", "--webhook-url", b24.box.webhook_url, env=env
    )
    assert again.returncode == 2 and "already exists" in again.stderr


def test_provision_dry_run_then_apply_then_rerun(env: dict[str, str], b24: CRMSandbox) -> None:
    add_b24(env, b24)
    b24.reset_stats()
    dry = run_cli("provision", "b24", "general.typical", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "+ pipeline" in dry.stdout and "+ stage" in dry.stdout and "(dry run)" in dry.stdout
    assert b24.writes() == 0

    applied = run_cli("provision", "b24", "general.typical", "--json", env=env)
    assert applied.returncode == 0, applied.stderr
    outcome = json.loads(applied.stdout)
    assert outcome["applied"] and outcome["plan"]["counts"]["create"] > 0
    webhook = next(i for i in outcome["plan"]["items"] if i["kind"] == "webhook")
    assert webhook["action"] == "manual" and "ONCRMDEALUPDATE" in webhook["reason"]

    b24.reset_stats()
    rerun = run_cli("provision", "b24", "general.typical", env=env)
    assert rerun.returncode == 0 and "Nothing to change." in rerun.stdout
    assert b24.writes() == 0


def test_provision_failure_shows_the_crm_text_and_exits_1(env: dict[str, str], b24: CRMSandbox) -> None:
    add_b24(env, b24)
    b24.fail_next("fields", count=50)
    failed = run_cli("provision", "b24", "general.typical", env=env)
    assert failed.returncode == 1
    [line] = failed.stderr.splitlines()
    assert line.startswith("error: the CRM failed during provisioning (refused the request): ")
    assert "injected" in line and "run the same command again to complete" in line


def test_provision_while_the_crm_is_down_is_one_line_and_exit_1(env: dict[str, str], b24: CRMSandbox) -> None:
    """The CRM answers 503 to every request: the plan cannot be read. One line, no traceback (the
    dry run takes the same path: the plan is read first either way)."""
    add_b24(env, b24)
    b24.box.fault("http_503", count=10_000)
    failed = run_cli("provision", "b24", "general.typical", env=env)
    assert failed.returncode == 1
    [line] = failed.stderr.splitlines()
    assert line.startswith("error: the CRM failed during provisioning (unavailable, HTTP 503): ")
    assert "503 Service Temporarily Unavailable" in line and "<html" not in line
    assert line.endswith("nothing was written") and failed.stdout == ""
    b24.clear_faults()
    assert b24.writes() == 0


def test_check_while_rate_limited_says_so_in_one_line(env: dict[str, str], amo: CRMSandbox) -> None:
    result = run_cli(
        "connections", "add", "amo", "--crm", "amocrm", "--subdomain", amo.box.config.subdomain,
        "--token", amo.box.config.token, "--base-url", amo.url, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    amo.box.fault("rate_limit", count=10_000)  # a 429 storm
    check = run_cli("connections", "check", "amo", env=env)
    assert check.returncode == 1 and check.stderr == ""
    [line] = check.stdout.splitlines()
    assert line.startswith("problem amo: the CRM is rate-limiting this account right now")
    listed = run_cli("connections", "list", "--json", env=env)
    [row] = json.loads(listed.stdout)
    assert row["health"]["state"] == "degraded" and "rate-limiting" in row["health"]["reason"]


def test_provision_unknown_template_or_connection_exits_2(env: dict[str, str], b24: CRMSandbox) -> None:
    add_b24(env, b24)
    assert "no template with key" in run_cli("provision", "b24", "nope.nope", env=env).stderr
    result = run_cli("provision", "ghost", "general.typical", env=env)
    assert result.returncode == 2 and "no connection named 'ghost'" in result.stderr
