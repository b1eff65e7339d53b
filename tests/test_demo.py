"""`funnelsync demo --duration S --json`: the whole loop runs without a browser and reports it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.demo_cli import summary_figure
from tests.support.cli import run_cli, run_cli_process
from tests.support.crm import FAST_RETRY_ENV
from tests.support.server import free_port


@pytest.mark.slow
def test_demo_runs_the_loop_and_prints_a_summary(tmp_path: Path) -> None:
    ports = [str(free_port()) for _ in range(3)]
    result = run_cli_process(  # a real process: the demo serves, handles signals and exits
        "demo", "--duration", "6", "--json", "--port", ports[0], "--bitrix24-port", ports[1],
        "--amocrm-port", ports[2], env={"FUNNELSYNC_DATA_DIR": str(tmp_path)}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["deals"] >= 2 and summary["events"] >= summary["deals"]
    assert summary["transitions"] >= summary["deals"]
    assert summary["events_failed"] == 0 and summary["dead_letters"] == 0
    # Rules ran through the service's scheduler: the repair funnel's first stage has an entry task.
    assert summary["tasks_pushed"] >= 1
    # The funnels with automations reached their clients through the channel sandboxes: a visit
    # reminder (a date in a deal field, by the sweep), a survey (a stage entry) and a win-back offer.
    assert summary["messages_sent"] == {"visit_reminder": 1, "satisfaction_survey": 1, "personal_offer": 1}
    assert (tmp_path / "demo" / "funnelsync.db").exists()


# The demo's outbox and connectors retry on the operator's settings: here much faster than the
# defaults, so the outage spends the demo's budget of 3 attempts in seconds instead of minutes.
FAST_RETRIES = {
    **FAST_RETRY_ENV,
    "FUNNELSYNC_OUTBOX_RETRY_BASE_DELAY_SECONDS": "0.2",
    "FUNNELSYNC_OUTBOX_RETRY_MAX_DELAY_SECONDS": "0.5",
}


@pytest.mark.slow(seconds=30)
def test_the_demos_outage_leaves_dead_letters_to_retry(tmp_path: Path) -> None:
    """The amoCRM sandbox answers 503 for 12 s from the first second: with the demo's budget of 3
    attempts the first commands of the outage die, and the Failures page has something true to show;
    the Bitrix24 funnel carries on meanwhile."""
    ports = [str(free_port()) for _ in range(3)]
    result = run_cli_process(
        "demo", "--duration", "16", "--json", "--port", ports[0], "--bitrix24-port", ports[1],
        "--amocrm-port", ports[2], "--outage-at", "1", "--outage-for", "12",
        env={"FUNNELSYNC_DATA_DIR": str(tmp_path), **FAST_RETRIES}, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["dead_letters"] >= 1
    assert summary["events_failed"] == 0 and summary["tasks_pushed"] >= 1


def test_demo_rejects_a_bad_duration(tmp_path: Path) -> None:
    result = run_cli("demo", "--duration", "0", env={"FUNNELSYNC_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "--duration must be a positive number" in result.stderr


def test_demo_rejects_a_negative_outage(tmp_path: Path) -> None:
    result = run_cli("demo", "--outage-for", "-1", env={"FUNNELSYNC_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "must not be negative" in result.stderr


def test_the_printed_summary_spells_out_counts_by_name() -> None:
    assert summary_figure(12) == "12"
    assert summary_figure({"visit_reminder": 1, "personal_offer": 2}) == "visit_reminder 1, personal_offer 2"
    assert summary_figure({}) == "0"  # no message sent yet
