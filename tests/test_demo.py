"""`funnelsync demo --duration S --json`: the whole loop runs without a browser and reports it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import run_cli
from tests.support.server import free_port


def test_demo_runs_the_loop_and_prints_a_summary(tmp_path: Path) -> None:
    ports = [str(free_port()) for _ in range(3)]
    result = run_cli(
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
    assert (tmp_path / "demo" / "funnelsync.db").exists()


def test_demo_rejects_a_bad_duration(tmp_path: Path) -> None:
    result = run_cli("demo", "--duration", "0", env={"FUNNELSYNC_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "--duration must be a positive number" in result.stderr
