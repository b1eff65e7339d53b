"""The Waker: a webhook or a retry runs the inbox job now when this process runs the scheduler,
and does nothing when it does not. A real APScheduler and the app's real lifespan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.requests import Request

from app.config import Settings
from app.main import create_app
from app.scheduler import SchedulerWaker
from app.waker import INBOX_JOB, NoWaker, get_waker


async def _idle() -> None:
    return None


def _request(app: FastAPI) -> Request:
    return Request({"type": "http", "app": app, "method": "POST", "path": "/", "headers": []})


async def test_waking_moves_the_job_to_now() -> None:
    scheduler = AsyncIOScheduler(timezone=UTC)
    job = scheduler.add_job(_idle, "interval", hours=1, id=INBOX_JOB)
    scheduler.start(paused=True)  # running, so the job has a next run time, but never runs it here
    try:
        assert job.next_run_time > datetime.now(UTC) + timedelta(minutes=30)
        SchedulerWaker(scheduler).wake(INBOX_JOB)
        assert job.next_run_time <= datetime.now(UTC)
        SchedulerWaker(scheduler).wake("no such job")  # an unknown job is not an error
    finally:
        scheduler.shutdown(wait=False)


def test_an_app_without_a_lifespan_gets_a_no_op_waker() -> None:
    assert isinstance(get_waker(_request(FastAPI())), NoWaker)


async def test_the_lifespan_puts_the_schedulers_waker_on_the_app(database_url: str, tmp_path: Path) -> None:
    for enabled, expected in ((True, SchedulerWaker), (False, NoWaker)):
        settings = Settings(
            database_url=database_url,
            api_token=SecretStr("test-token-1234567890"),
            data_dir=tmp_path,
            scheduler_enabled=enabled,
            inbox_interval_seconds=3600,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            waker = get_waker(_request(app))
            assert isinstance(waker, expected)
            if enabled:
                assert isinstance(waker, SchedulerWaker) and waker.scheduler is app.state.scheduler
                app.state.scheduler.pause()  # woken, the job would run now: keep it from running here
                job = app.state.scheduler.get_job(INBOX_JOB)
                assert job.next_run_time > datetime.now(UTC) + timedelta(minutes=30)
                waker.wake(INBOX_JOB)
                assert job.next_run_time <= datetime.now(UTC)
