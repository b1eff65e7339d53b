"""Shutting the scheduler down (app.scheduler.stop_scheduler): a job run in progress gets the grace
to finish instead of being cancelled mid-way, and one that outlasts it is cancelled. A real
APScheduler on the test's event loop."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from pydantic import SecretStr

from app.config import Settings
from app.scheduler import Runtime, stop_scheduler


def _runtime(tmp_path: Path, grace: float) -> Runtime:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        api_token=SecretStr("test-token-1234567890"),
        data_dir=tmp_path,
        shutdown_grace_seconds=grace,
    )
    return Runtime(sessions=None, settings=settings, connectors=None)  # type: ignore[arg-type]  # unused here


def _start(runtime: Runtime, job: Any) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        runtime.tracked(job), "interval", args=[runtime], hours=1, next_run_time=datetime.now(UTC)
    )
    scheduler.start()
    return scheduler


async def test_a_running_job_finishes_before_the_scheduler_stops(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, grace=60)
    started, release = asyncio.Event(), asyncio.Event()
    ends: list[str] = []

    async def job(_: Runtime) -> None:
        started.set()
        try:
            await release.wait()
            ends.append("finished")
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise

    scheduler = _start(runtime, job)
    await started.wait()
    assert len(runtime.running) == 1
    # The job is released only after the stop's first step (call_soon runs callbacks in order): a
    # stop that did not wait would have cancelled it by then.
    stopping = asyncio.create_task(stop_scheduler(scheduler, runtime))
    asyncio.get_running_loop().call_soon(release.set)
    await stopping
    assert ends == ["finished"]
    assert not scheduler.running and runtime.running == set()


async def test_a_job_that_outlasts_the_grace_is_cancelled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = _runtime(tmp_path, grace=0)
    started = asyncio.Event()
    ends: list[str] = []

    async def job(_: Runtime) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: a CRM call that hangs
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise

    scheduler = _start(runtime, job)
    await started.wait()
    [run] = runtime.running
    with caplog.at_level(logging.WARNING, logger="funnelsync.scheduler"):
        await stop_scheduler(scheduler, runtime)
    await asyncio.gather(run, return_exceptions=True)  # APScheduler's wrapper records the error itself
    assert ends == ["cancelled"] and not scheduler.running
    assert any("1 job run(s) still going" in r.getMessage() for r in caplog.records)
