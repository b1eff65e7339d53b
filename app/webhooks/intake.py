"""How busy this process's webhook receiver is, so the inbox job can give way to it.

`serve` with the scheduler on receives deliveries and mirrors them in one process and one event
loop. Under a burst both compete for the same CPU, and a CRM whose deliveries are answered late
retries them or, past its limits, disables the hook; a mirror a few seconds behind costs nothing
that is not made up once the burst ends. So while many deliveries are in flight, an inbox run
first waits for the receiver to calm down (at most `FUNNELSYNC_INBOX_YIELD_SECONDS`) and then
gives each connection a single batch before it ends and waits again: the mirror keeps moving, at a
bounded pace, and the receiver gets the rest. With the receiver quiet, nothing changes.

Only deliveries in this process count: a worker in a process of its own has its own CPU share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from starlette.types import ASGIApp, Receive, Scope, Send

from app import metrics

# Deliveries in flight from which the receiver counts as busy. A steady flow of a few hundred a
# minute has one or two in flight at a time; a CRM's burst (a bulk edit, a reconnect replaying its
# queue) keeps dozens.
BUSY_AT = 8


class Intake:
    """Deliveries in flight in this process (one per app; see app.state.intake)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.giving_way = 0  # inbox runs waiting for the receiver right now (tests read it)
        self._calm: asyncio.Event | None = None  # made in the event loop on first use

    @property
    def busy(self) -> bool:
        return self.in_flight >= BUSY_AT

    def holds_back(self, at_most: float) -> bool:
        """Whether the inbox should hold back now, allowed to wait up to `at_most` seconds (0: it
        never gives way)."""
        return at_most > 0 and self.busy

    def _event(self) -> asyncio.Event:
        if self._calm is None:
            self._calm = asyncio.Event()
            if not self.busy:
                self._calm.set()
        return self._calm

    @contextmanager
    def delivery(self) -> Iterator[None]:
        """Count one delivery in flight while the block runs."""
        self.in_flight += 1
        metrics.WEBHOOKS_IN_FLIGHT.inc()
        if self.busy:
            self._event().clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            metrics.WEBHOOKS_IN_FLIGHT.dec()
            if not self.busy:
                self._event().set()

    async def give_way(self, at_most: float) -> None:
        """Return once the receiver is not busy, or after `at_most` seconds whatever it is."""
        if not self.holds_back(at_most):
            return
        self.giving_way += 1
        started = time.monotonic()
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._event().wait(), at_most)
        finally:
            self.giving_way -= 1
            metrics.INBOX_GAVE_WAY.inc(time.monotonic() - started)


class CountDeliveries:
    """ASGI middleware counting the webhook requests in flight, from the moment their headers are
    read to the end of the answer. Counted here rather than in the endpoint: under a burst most of a
    delivery's time is spent waiting for the event loop before and after the endpoint runs, and a
    count inside it stayed far below the requests actually waiting (issue #14 measurements)."""

    def __init__(self, app: ASGIApp, intake: Intake, prefix: str = "/webhooks/") -> None:
        self.app = app
        self.intake = intake
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        with self.intake.delivery():
            await self.app(scope, receive, send)
