"""A bounded, fair, isolating runner for per-connection work (the outbox, inbox and reconcile jobs).

One client portal with a backlog, a low rate limit or an outage must not hold up the others, so a
job does not walk its connections one after another. It gives each connection *turns* (a turn is a
bounded piece of work: a few outbox requests, one inbox batch), at most `slots` turns at once:

- fair: connections queue in round robin; a connection with more work after its turn goes to the
  back of the queue, so a backlog of 10,000 commands delays another connection by one turn at most;
- one turn per connection at a time (in this process): its CRM account's rate limiter and its
  lease stay as exact as with one loop;
- isolating: a turn whose CRM call starts waiting to try again (a 5xx, a timeout, a rate limit:
  connectors.http.retry_wait_notice) gives its slot back to the queue at that moment, and so does a
  turn that outlasts `turn_budget` seconds (an account answering slowly). It is not cancelled (a
  request in flight must record its answer); it finishes in the background, the run no longer
  waits for it, and until it ends its connection gets no new turn, in this run or the next one. A
  connection already known to be failing (its health says its last CRM calls failed) starts that
  way: one turn per run at most, in the background, never in a slot; its CRM's in-place retries
  pace it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable, Iterable
from functools import partial
from typing import Any, Generic, TypeVar

from app.connections import health
from connectors.http import retry_wait_notice

K = TypeVar("K", bound=Hashable)
# One turn of work for a key: True when the key has more work right now (it queues again).
Turn = Callable[[K], Coroutine[Any, Any, bool]]

log = logging.getLogger("funnelsync.concurrency")


def is_failing(consecutive_failures: int | None, last_failure_class: str | None) -> bool:
    """A connection whose last CRM calls failed for a reason that makes the next ones slow too:
    timeouts, 5xx, network errors, rate limits (not a refusal: that answers at once)."""
    return bool(consecutive_failures) and health.is_transient(health.error_from(last_failure_class, ""))


class ConnectionPool(Generic[K]):
    """Runs turns per key (a connection id); long-lived, so a slow turn set aside by one run still
    keeps its key out of the next run until it ends."""

    def __init__(self, slots: int, turn_budget: float | None = None) -> None:
        if slots < 1:
            raise ValueError(f"a pool needs at least one slot, not {slots}")
        self.slots = slots
        self.turn_budget = turn_budget  # None: never set a turn aside (one-off calls, tests)
        self._busy: dict[K, asyncio.Task[bool]] = {}  # keys with a turn running, in any run
        self._aside: set[K] = set()  # of those, the keys whose turn runs outside the slots
        self.set_aside: list[K] = []  # keys whose turn outlasted the budget in the last run

    def busy(self, key: K) -> bool:
        return key in self._busy

    async def run(self, keys: Iterable[K], turn: Turn[K], *, failing: Iterable[K] = ()) -> None:
        """Give each key turns until it has no more work; return when every key is done or set
        aside as slow. Keys whose turn from an earlier run is still going are skipped. Keys known
        to be `failing` (their account's last CRM calls failed) get one turn, set aside from the
        start: it holds no slot and the run does not wait for it."""
        self.set_aside = []
        failing = set(failing)
        queue: deque[K] = deque()
        for key in dict.fromkeys(keys):
            if key in self._busy:
                continue
            if key in failing:
                self._start_aside(key, turn)
            else:
                queue.append(key)
        running: dict[asyncio.Task[bool], tuple[K, float]] = {}
        waits = _RetryWaits()
        while queue or running:
            while queue and len(running) < self.slots:
                key = queue.popleft()
                if key in self._busy:
                    continue  # another run of this pool (a woken job) has a turn of it going
                task = waits.start(turn, key)
                self._busy[key] = task
                running[task] = (key, time.monotonic())
            if not running:
                break  # every key left in the queue has a turn going in another run
            done = await waits.wait(running, self._wait_for(running))
            for task in [t for t in running if t in done]:  # in the order they started
                key, _ = running.pop(task)
                self._busy.pop(key, None)
                if self._more(key, task):
                    queue.append(key)  # round robin: back of the queue
            self._set_aside_waiting(running, waits)
            self._set_aside_slow(running)

    def _start_aside(self, key: K, turn: Turn[K]) -> None:
        """A failing key's turn, outside the slots. At most `slots` of them run at once (each mostly
        waits on its CRM's retries); beyond that a failing key waits for a later run."""
        if len(self._aside) >= self.slots:
            return
        task = asyncio.create_task(turn(key))
        self._busy[key] = task
        self._put_aside(key, task)

    async def wait_idle(self) -> None:
        """Wait for the turns set aside earlier (`worker --once` must not exit before they end)."""
        while self._busy:
            await asyncio.wait(list(self._busy.values()))
            for key, task in list(self._busy.items()):
                if task.done():
                    del self._busy[key]
                    self._aside.discard(key)

    async def cancel_aside(self) -> None:
        """Cancel the turns set aside and wait for them to unwind (process shutdown). A cancelled
        turn ends as a killed worker's would: what it had claimed is taken up again by a later run,
        as after a crash (app.outbox.recovery)."""
        tasks = list(self._busy.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _wait_for(self, running: dict[asyncio.Task[bool], tuple[K, float]]) -> float | None:
        if self.turn_budget is None:
            return None
        now = time.monotonic()
        return max(0.0, min(started + self.turn_budget - now for _, started in running.values()))

    def _set_aside_waiting(
        self, running: dict[asyncio.Task[bool], tuple[K, float]], waits: _RetryWaits
    ) -> None:
        """Turns whose CRM calls began waiting to try again (an outage, a rate limit) give their
        slot back at once, not at the end of the budget: the run does not wait for them."""
        if self.turn_budget is None:
            return
        for task in [t for t in running if t in waits.tasks]:
            key, _ = running.pop(task)
            self._put_aside(key, task)
            log.info("%s: its CRM is retrying; the turn goes on without holding a slot", key)

    def _set_aside_slow(self, running: dict[asyncio.Task[bool], tuple[K, float]]) -> None:
        if self.turn_budget is None:
            return
        now = time.monotonic()
        for task, (key, started) in list(running.items()):
            if now - started < self.turn_budget:
                continue
            del running[task]  # its slot goes to the next key in the queue
            self._put_aside(key, task)
            log.info("%s: a turn took over %.0f s; it goes on without holding a slot", key, self.turn_budget)

    def _put_aside(self, key: K, task: asyncio.Task[bool]) -> None:
        self._aside.add(key)
        self.set_aside.append(key)
        task.add_done_callback(partial(self._finished_aside, key))

    def _finished_aside(self, key: K, task: asyncio.Task[bool]) -> None:
        self._aside.discard(key)
        if self._busy.get(key) is task:
            del self._busy[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: a turn set aside failed", key, exc_info=task.exception())

    @staticmethod
    def _more(key: K, task: asyncio.Task[bool]) -> bool:
        """The turn's answer; a turn that raised is logged and its key has no more turns this run
        (one connection's trouble never stops the others)."""
        if task.cancelled():
            return False
        error = task.exception()
        if error is not None:
            log.error("%s: a turn failed", key, exc_info=error)
            return False
        return task.result()


class _RetryWaits:
    """The turns of one run whose CRM calls started waiting before trying again: each turn runs with
    connectors.http.retry_wait_notice set to note its task here and wake the run's wait."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self._noticed = asyncio.Event()

    def start(self, turn: Turn[K], key: K) -> asyncio.Task[bool]:
        return asyncio.create_task(self._run(turn, key))

    async def _run(self, turn: Turn[K], key: K) -> bool:
        task = asyncio.current_task()

        def notice() -> None:
            if task is not None:
                self.tasks.add(task)
            self._noticed.set()

        retry_wait_notice.set(notice)  # in this task's own context: its turn's calls only
        return await turn(key)

    async def wait(
        self, running: Iterable[asyncio.Task[bool]], at_most: float | None
    ) -> set[asyncio.Task[bool]]:
        """Until a turn ends, one starts waiting to retry, or `at_most` seconds; the turns that ended."""
        noticed = asyncio.ensure_future(self._noticed.wait())
        try:
            done, _ = await asyncio.wait([*running, noticed], timeout=at_most, return_when="FIRST_COMPLETED")
        finally:
            noticed.cancel()
        self._noticed.clear()
        return {task for task in done if task is not noticed}
