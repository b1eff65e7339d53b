"""The fixed sets of values stored in the outbox tables.

Apart from the models so that the pure rules engine (app/rules/engine.py) can name a command's
status without importing the database layer."""

from __future__ import annotations

from enum import StrEnum


class CommandStatus(StrEnum):
    """Where a command stands: pending -> sending -> done; or failed (retry at next_attempt_at) ->
    ... -> dead (permanent, out of attempts, or sent by a worker that died before recording the
    answer: see outbox.service; or never sent because the command it waits for is dead: last_error
    starts with "not sent:")."""

    PENDING = "pending"
    SENDING = "sending"  # in a request now, or in one whose answer never came back
    FAILED = "failed"
    DEAD = "dead"
    DONE = "done"


class AttemptOutcome(StrEnum):
    """What one entry of a command's history records (OutboxAttempt.outcome)."""

    DONE = "done"
    FAILED = "failed"  # retried later
    DEAD = "dead"
    UNCERTAIN = "uncertain"  # no answer
    PAUSED = "paused"  # the CRM refused the account
    BLOCKED = "blocked"  # not sent: its prerequisite failed
    FOUND = "found"  # the CRM had it
    REQUEUED = "requeued"  # retried by hand
