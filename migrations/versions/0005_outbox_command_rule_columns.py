"""outbox: the rule, stage entry and echo of a command as columns, no longer inside strings (issue #12)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 16:30:00.000000
"""

import re
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Values of app.outbox.statuses.RuleName as they were at this revision: a migration must not change
# meaning when the application's enum does.
REVERT_MOVE = "revert_move"
API_MOVE = "api_move"
# What follows the entry's scope in a rules key -> the rule that queued it. "fu-redate" keys never
# reach the outbox (they re-date a queued task), so they are not here.
RULE_OF_KEY_TAIL = (
    ("revert:move", REVERT_MOVE),
    ("revert:comment", "revert_comment"),
    ("missing:comment", "missing_fields_comment"),
    ("missing:task", "missing_fields_task"),
    ("task:", "stage_task"),
    ("fu:", "follow_up_task"),
    ("fu-move:", "follow_up_deadline_move"),
    ("sla", "sla_escalation"),
)
# rules:{deal}:{stage code}#{entry}:{tail}; the stage code is greedy up to the last "#<digits>:".
RULES_KEY = re.compile(r"^rules:\d+:.*#(?P<entry>\d+):(?P<tail>.+)$")
MOVED_KEYS = ("origin", "echo_transition_id")  # a move's payload keys that become columns
BATCH = 1000

COMMANDS = sa.table(
    "outbox_commands",
    sa.column("id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("idempotency_key", sa.String()),
    sa.column("payload", sa.JSON()),
    sa.column("rule", sa.String()),
    sa.column("stage_entry_id", sa.Integer()),
    sa.column("echo_transition_id", sa.Integer()),
)
TRANSITIONS = sa.table("stage_transitions", sa.column("id", sa.Integer()))


def upgrade() -> None:
    # New nullable columns: existing commands get NULL, then the backfill fills what their keys and
    # payloads say. ALTER TABLE ... ADD COLUMN on SQLite too (REFERENCES inline, which SQLite allows
    # when the default is NULL), never a rebuild: dropping the old table during a rebuild, with
    # foreign keys on, would cascade to every command's attempts and dependants.
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("outbox_commands", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("rule", sa.String(length=32), nullable=True))
        for name in ("stage_entry_id", "echo_transition_id"):
            fk = sa.ForeignKey(
                "stage_transitions.id",
                name=f"fk_outbox_commands_{name}_stage_transitions",
                ondelete="SET NULL",
            )
            batch_op.add_column(sa.Column(name, sa.Integer(), fk, nullable=True), inline_references=sqlite)
            batch_op.create_index(f"ix_outbox_commands_{name}", [name], unique=False)
    _backfill()


def downgrade() -> None:
    # 0004's code reads a move's origin and echo from its payload: put them back first. The rule of
    # other commands and the stage entry are in their keys already. Then plain DROP COLUMN (SQLite
    # 3.35+), never a rebuild, for the reason given in upgrade.
    _restore_payloads()
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("outbox_commands", schema=None, recreate="never") as batch_op:
        for name in ("echo_transition_id", "stage_entry_id"):
            batch_op.drop_index(f"ix_outbox_commands_{name}")
            if not sqlite:  # SQLite's inline REFERENCES goes with its column
                batch_op.drop_constraint(f"fk_outbox_commands_{name}_stage_transitions", type_="foreignkey")
            batch_op.drop_column(name)
        batch_op.drop_column("rule")


# --- backfill -------------------------------------------------------------------------------------


def _backfill() -> None:
    """Fill the new columns of every existing command from its key and payload, and take the moved
    keys out of the payload (the payload is what is sent to the CRM), a batch of rows at a time."""
    bind = op.get_bind()
    update = (
        sa.update(COMMANDS)
        .where(COMMANDS.c.id == sa.bindparam("command_id"))
        .values(
            # Bind names differ from the columns': SQLAlchemy reserves those for its own VALUES.
            rule=sa.bindparam("new_rule"),
            stage_entry_id=sa.bindparam("new_stage_entry_id"),
            echo_transition_id=sa.bindparam("new_echo_transition_id"),
            payload=sa.bindparam("new_payload", type_=sa.JSON()),
        )
    )
    query = sa.select(COMMANDS.c.id, COMMANDS.c.kind, COMMANDS.c.idempotency_key, COMMANDS.c.payload)
    for rows in _batches(bind, query):
        wanted = {t for row in rows for t in _transition_ids(row)}
        existing = _existing_transitions(bind, wanted)
        changes = [c for c in (_columns_of(row, existing) for row in rows) if c is not None]
        if changes:
            bind.execute(update, changes)


def _batches(bind: sa.Connection, query: sa.Select[Any]) -> Iterator[list[sa.Row[Any]]]:
    """The rows of `query` (which selects the commands' id) in id order, BATCH at a time."""
    last_id = 0
    while True:
        rows = list(bind.execute(query.where(COMMANDS.c.id > last_id).order_by(COMMANDS.c.id).limit(BATCH)))
        if not rows:
            return
        yield rows
        last_id = rows[-1].id


def _existing_transitions(bind: sa.Connection, ids: set[int]) -> set[int]:
    if not ids:
        return set()
    query = sa.select(TRANSITIONS.c.id).where(TRANSITIONS.c.id.in_(sorted(ids)))
    return set(bind.scalars(query))


def _rule_and_entry(key: str) -> tuple[str | None, int | None]:
    match = RULES_KEY.match(key)
    if match is None:
        return (API_MOVE if key.startswith("api:move:") else None), None
    return _rule_of_tail(match["tail"]), int(match["entry"])


def _rule_of_tail(tail: str) -> str | None:
    for start, rule in RULE_OF_KEY_TAIL:
        # "task:", "fu:", "fu-move:" begin a longer tail; the others are the whole tail.
        if tail == start or (start.endswith(":") and tail.startswith(start)):
            return rule
    return None


def _move_payload(row: sa.Row[Any]) -> dict[str, Any] | None:
    """The payload of a move (only moves ever had origin and echo keys), else None."""
    return row.payload if row.kind == "move" and isinstance(row.payload, dict) else None


def _echo_of(payload: dict[str, Any] | None) -> int | None:
    value = payload.get("echo_transition_id") if payload is not None else None
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _transition_ids(row: sa.Row[Any]) -> list[int]:
    _, entry = _rule_and_entry(row.idempotency_key)
    return [t for t in (entry, _echo_of(_move_payload(row))) if t is not None]


def _columns_of(row: sa.Row[Any], existing: set[int]) -> dict[str, Any] | None:
    """The new column values of one command, or None when it has nothing to fill or remove. Only
    transitions that still exist are referenced (a foreign key cannot point at a deleted one)."""
    rule, entry = _rule_and_entry(row.idempotency_key)
    payload = _move_payload(row) or {}
    origin = payload.get("origin")
    if origin == "api" or (origin == "revert" and rule is None):
        rule = API_MOVE if origin == "api" else REVERT_MOVE
    moved = [k for k in MOVED_KEYS if k in payload]
    if rule is None and entry is None and not moved:
        return None
    echo = _echo_of(payload)
    return {
        "command_id": row.id,
        "new_rule": rule,
        "new_stage_entry_id": entry if entry in existing else None,
        "new_echo_transition_id": echo if echo in existing else None,
        "new_payload": {k: v for k, v in payload.items() if k not in moved} if moved else row.payload,
    }


def _restore_payloads() -> None:
    """The payload keys 0004 kept a move's origin and echo in, from the columns."""
    bind = op.get_bind()
    origins = {API_MOVE: "api", REVERT_MOVE: "revert"}
    query = sa.select(
        COMMANDS.c.id, COMMANDS.c.payload, COMMANDS.c.rule, COMMANDS.c.echo_transition_id
    ).where(sa.or_(COMMANDS.c.rule.in_(list(origins)), COMMANDS.c.echo_transition_id.is_not(None)))
    update = (
        sa.update(COMMANDS)
        .where(COMMANDS.c.id == sa.bindparam("command_id"))
        .values(payload=sa.bindparam("new_payload", type_=sa.JSON()))
    )
    for rows in _batches(bind, query):
        changes = []
        for row in rows:
            if not isinstance(row.payload, dict):
                continue  # not a move's payload: nothing of 0004's to put back
            payload = dict(row.payload)
            if row.rule in origins:
                payload["origin"] = origins[row.rule]
            if row.echo_transition_id is not None:
                payload["echo_transition_id"] = row.echo_transition_id
            changes.append({"command_id": row.id, "new_payload": payload})
        if changes:
            bind.execute(update, changes)
