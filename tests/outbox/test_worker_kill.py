"""A `funnelsync worker --once` process killed with SIGKILL in the middle of a drain, then restarted:
every command must take effect in the CRM exactly once.

The dangerous moment is after the CRM executed a batch and before the worker committed its outcome.
The test widens it deterministically (see _kill_mid_drain) and kills the worker inside it, watching
the Bitrix24 sandbox's stats: the sandbox answers a wait once it executed what the test waits for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.db import utcnow
from app.leases import Lease, holder_is_dead
from app.outbox.models import OutboxCommand
from tests.outbox.conftest import Outbox
from tests.support.cli import REPO

BATCH_DELAY = 1.0  # seconds the sandbox holds the first batch (the test takes the DB lock meanwhile)
DEADLINE = 60.0
TITLE = "Перезвонить клиенту"
pytestmark = pytest.mark.parametrize("crm", ["bitrix24"])


def _worker(outbox: Outbox, tmp_path: Path) -> subprocess.Popen[str]:
    assert outbox.settings.secret_key is not None
    env = {
        **os.environ,
        "FUNNELSYNC_DATABASE_URL": outbox.settings.database_url or "",
        "FUNNELSYNC_DATA_DIR": str(tmp_path),
        "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true",  # the sandboxes run on 127.0.0.1
        "FUNNELSYNC_SECRET_KEY": outbox.settings.secret_key.get_secret_value(),
        "FUNNELSYNC_API_TOKEN": "test-token-1234567890",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "app", "worker", "--once"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, stderr
    result: dict[str, Any] = json.loads(stdout)
    return result


async def _kill_mid_drain(outbox: Outbox, tmp_path: Path, method: str) -> None:
    """Start a worker and SIGKILL it after the CRM executed a batch but before the worker recorded
    the outcome. The window is made wide on purpose: the sandbox holds the first batch a moment,
    during which the test takes the outbox table's write lock, so the worker's commit of the
    outcome waits on the database while the test watches the CRM execute the batch."""
    outbox.sandbox.reset_stats()
    outbox.box.fault("timeout", count=1, method="batch", seconds=BATCH_DELAY)
    worker = _worker(outbox, tmp_path)
    try:
        outbox.box.wait_for_stats(DEADLINE, by_method={"batch": 1})  # the first batch arrived
        async with outbox.sessions() as locker:
            # A no-op update of every command: row locks (PostgreSQL) or the write lock (SQLite).
            await locker.execute(update(OutboxCommand).values(attempts=OutboxCommand.attempts))
            stats = outbox.box.wait_for_stats(DEADLINE, commands={method: 50})  # the batch ran
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            await locker.rollback()
        assert stats["commands"][method] == 50
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert sum(1 for c in await outbox.commands() if c.status == "done") == 0  # nothing recorded

    # The dead worker still holds the connection's outbox lease, unexpired (LEASE_TTL, 5 minutes);
    # it no longer runs on this host, so the restart that follows takes the lease over at once.
    async with outbox.sessions() as session:
        held = await session.scalar(select(Lease).where(Lease.key == f"outbox:{outbox.connection_id}"))
    assert held is not None, "the killed worker left no lease"
    assert held.expires_at > utcnow() and holder_is_dead(held.holder)


@pytest.mark.slow(seconds=9)  # a worker process is started and killed
async def test_moves_survive_a_worker_killed_mid_drain(outbox: Outbox, tmp_path: Path) -> None:
    deals = outbox.seed(500)
    target = outbox.stages[0]
    await outbox.enqueue_moves(deals, target)

    await _kill_mid_drain(outbox, tmp_path, "crm.item.update")
    assert 0 < outbox.applied_writes("move") < 500
    not_done = sum(1 for c in await outbox.commands() if c.status != "done")
    restarted = _finish(_worker(outbox, tmp_path))

    # A move in flight when the worker died is simply sent again: it lands the same way.
    assert restarted["commands_delivered"] == not_done == 500
    assert {c.status for c in await outbox.commands()} == {"done"}
    stages = outbox.stages_of()
    assert Counter(stages[d] for d in deals) == {target: 500}


@pytest.mark.slow(seconds=9)
async def test_tasks_survive_a_worker_killed_mid_drain_exactly_once(outbox: Outbox, tmp_path: Path) -> None:
    """Tasks are not idempotent in the CRM: the batch in flight must not be sent again blindly. The
    restarted worker looks the in-flight tasks up in the CRM and records what it finds."""
    deals = outbox.seed(500)
    await outbox.enqueue_tasks(deals, TITLE)
    await _kill_mid_drain(outbox, tmp_path, "tasks.task.add")
    assert sum(outbox.tasks().values()) == 50  # the CRM created the in-flight batch; nothing recorded it
    _finish(_worker(outbox, tmp_path))

    tasks = outbox.tasks()
    duplicated = sorted(deal for (deal, _), n in tasks.items() if n > 1)
    assert not duplicated, f"{len(duplicated)} deals got their task twice"
    assert tasks == {(d, TITLE): 1 for d in deals}
    commands = await outbox.commands()
    assert {c.status for c in commands} == {"done"}, Counter(c.status for c in commands)  # none dead
    assert all(c.crm_result_id for c in commands)  # the in-flight ones too: reconciled with the CRM
