"""The fixed sets of values stored in the outbox tables.

Apart from the models so that the pure rules engine (app/rules/engine.py) can name a command's
status without importing the database layer."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args


class CommandStatus(StrEnum):
    """Where a command stands: pending -> sending -> done; or failed (retry at next_attempt_at) ->
    ... -> dead (permanent, out of attempts, or sent by a worker that died before recording the
    answer: see app.outbox.recovery; or never sent because the command it waits for is dead: last_error
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


class RuleName(StrEnum):
    """Which rule queued a command (OutboxCommand.rule), so readers find a rule's commands by this
    column instead of parsing idempotency keys. NULL for commands no rule or person asked for.

    API_MOVE is a move a person asked for through the API rather than a rule: it is here, and not
    in a separate "origin" column, because "who asked" is exactly "which rule" with one more
    member, and one column cannot disagree with itself."""

    REVERT_MOVE = "revert_move"  # back to the previous stage: required fields are empty
    REVERT_COMMENT = "revert_comment"  # why it was moved back (or why it could not be)
    MISSING_FIELDS_COMMENT = "missing_fields_comment"
    MISSING_FIELDS_TASK = "missing_fields_task"
    STAGE_TASK = "stage_task"  # one of the stage's own tasks
    FOLLOW_UP_TASK = "follow_up_task"
    FOLLOW_UP_DEADLINE_MOVE = "follow_up_deadline_move"  # the CRM's follow-up task gets a new due date
    SLA_ESCALATION = "sla_escalation"
    API_MOVE = "api_move"  # POST /api/deals/{id}/move: a person's decision, whose entry runs the rules
    AUTOMATION = "automation"  # an action of a template automation (app.automations.runner)


# Command kinds, in delivery order within a drain: a task is created before a deadline move could
# name it; a new deal (repeat sale, win-back, a bot's lead) waits for nothing.
CommandKind = Literal["deal", "move", "task", "task_due", "comment", "fields"]
KINDS: tuple[CommandKind, ...] = get_args(CommandKind)
# What a person may send again (POST /api/outbox/.../retry, the Failures page).
RETRYABLE_STATUSES = (CommandStatus.FAILED, CommandStatus.DEAD)
