"""Scheduler job runs (app.scheduler): shutting down (stop_scheduler) gives a run in progress the
grace to finish instead of cancelling it mid-way and cancels one that outlasts it; a wake-up while a
job runs runs it again after. A real APScheduler on the test's event loop."""

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
from app.scheduler import Runtime, SchedulerWaker, stop_scheduler


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
        runtime.tracked(job, "job"), "interval", args=[runtime], hours=1, next_run_time=datetime.now(UTC)
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
    assert not scheduler.running and runtime.running == {}


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
    [run] = runtime.running.values()
    with caplog.at_level(logging.WARNING, logger="funnelsync.scheduler"):
        await stop_scheduler(scheduler, runtime)
    await asyncio.gather(run, return_exceptions=True)  # APScheduler's wrapper records the error itself
    assert ends == ["cancelled"] and not scheduler.running
    assert any("1 job run(s) still going" in r.getMessage() for r in caplog.records)


async def test_a_wake_up_while_the_job_runs_runs_it_again_after(tmp_path: Path) -> None:
    """APScheduler drops a run that falls due while the job still runs (one instance at a time):
    the event that woke it would wait a whole interval. The waker queues one more run instead."""
    runtime = _runtime(tmp_path, grace=60)
    first_started, release, second_started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    async def job(_: Runtime) -> None:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            first_started.set()
            await release.wait()
        else:
            second_started.set()

    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        runtime.tracked(job, "job"),
        "interval",
        args=[runtime],
        id="job",
        hours=1,
        next_run_time=datetime.now(UTC),
    )
    runtime.waker = SchedulerWaker(scheduler, runtime)
    scheduler.start()
    try:
        await first_started.wait()
        runtime.waker.wake("job")  # e.g. the inbox queued work while the outbox job was sending
        assert runtime.woken == {"job"}
        release.set()
        await asyncio.wait_for(second_started.wait(), timeout=30)  # a guard, not a pause: fails if never
        assert runs == [1, 2] and runtime.woken == set()
    finally:
        await stop_scheduler(scheduler, runtime)
