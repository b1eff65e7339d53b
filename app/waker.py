"""Run a periodic job now instead of at its next tick (a webhook just arrived, a failed event was
sent back). Receivers, endpoints and dashboard pages take the process's Waker from `app.state`
instead of importing app.scheduler, which sits above every domain: it imports all their jobs."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import Depends, Request

INBOX_JOB = "inbox"
OUTBOX_JOB = "outbox"


class Waker(Protocol):
    def wake(self, job_id: str) -> None: ...


class NoWaker:
    """Without a scheduler (`serve` with it off, tests) a job runs when a worker process gets to it."""

    def wake(self, job_id: str) -> None:
        return None


def get_waker(request: Request) -> Waker:
    # An app whose lifespan has not run (or ran without a scheduler) has no waker: nothing to wake.
    waker: Waker | None = getattr(request.app.state, "waker", None)
    return waker if waker is not None else NoWaker()


WakerDep = Annotated[Waker, Depends(get_waker)]
