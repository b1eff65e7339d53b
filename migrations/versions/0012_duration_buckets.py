"""daily stage durations per duration bucket, entries per deal outcome, and an index of each
funnel's deleted deals (issue #14)

The exits' durations move out of daily_stage_exits into daily_stage_durations, keyed by stage, a
quarter of an octave of duration and day: the analytics page then reads, for each stage's median,
only the bucket holding the middle rank instead of every exit of the period. daily_outcome_entries counts
entries per day under the stage each deal's latest transition went to (the page's won entries).
ix_deals_funnel_deleted (partial: deleted deals only) lets the page list the funnel's deleted deals
without scanning all its deals.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 18:00:00.000000
"""

import sys
from array import array
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (a migration must not change meaning when the application's code moves on).
UNMAPPED_STAGE = 0
BATCH = 10_000  # rows read per statement
INSERT_BATCH = 1_000  # rows written per statement

EXITS = sa.table(
    "daily_stage_exits",
    sa.column("from_stage_id", sa.Integer()),
    sa.column("day", sa.Date()),
    sa.column("to_stage_id", sa.Integer()),
    sa.column("exits", sa.Integer()),
    sa.column("durations", sa.Text()),
)
TRANSITIONS = sa.table(
    "stage_transitions",
    sa.column("id", sa.Integer()),
    sa.column("from_stage_id", sa.Integer()),
    sa.column("to_stage_id", sa.Integer()),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("from_stage_entered_at", sa.DateTime(timezone=True)),
    sa.column("deal_id", sa.Integer()),
)
STAGES = sa.table("stages", sa.column("id", sa.Integer()))
DEALS = sa.table("deals", sa.column("funnel_id", sa.Integer()), sa.column("deleted_at", sa.DateTime()))


def upgrade() -> None:
    durations = op.create_table(
        "daily_stage_durations",
        sa.Column("from_stage_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("exits", sa.Integer(), nullable=False),
        sa.Column("durations", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_stage_id"],
            ["stages.id"],
            name=op.f("fk_daily_stage_durations_from_stage_id_stages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("from_stage_id", "bucket", "day", name=op.f("pk_daily_stage_durations")),
    )
    op.create_index(
        "ix_daily_stage_durations_counts",
        "daily_stage_durations",
        ["from_stage_id", "bucket", "day", "exits"],
        unique=False,
    )
    _split_durations(durations)
    outcomes = op.create_table(
        "daily_outcome_entries",
        sa.Column("outcome_stage_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["outcome_stage_id"],
            ["stages.id"],
            name=op.f("fk_daily_outcome_entries_outcome_stage_id_stages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["stage_id"],
            ["stages.id"],
            name=op.f("fk_daily_outcome_entries_stage_id_stages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("outcome_stage_id", "day", "stage_id", name=op.f("pk_daily_outcome_entries")),
    )
    _count_outcomes(outcomes)
    with op.batch_alter_table("daily_stage_exits", schema=None) as batch_op:
        batch_op.drop_column("durations")
    deleted = DEALS.c.deleted_at.is_not(None)
    op.create_index(
        "ix_deals_funnel_deleted", "deals", ["funnel_id"], sqlite_where=deleted, postgresql_where=deleted
    )


def downgrade() -> None:
    op.drop_index("ix_deals_funnel_deleted", table_name="deals")
    op.drop_table("daily_outcome_entries")
    with op.batch_alter_table("daily_stage_exits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("durations", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("daily_stage_exits", schema=None) as batch_op:
        batch_op.alter_column("durations", server_default=None)
    _durations_per_target()
    op.drop_index("ix_daily_stage_durations_counts", table_name="daily_stage_durations")
    op.drop_table("daily_stage_durations")


# --- data -----------------------------------------------------------------------------------------


def _bucket(us: int) -> int:
    """Frozen copy of app.analytics.daily_counts.duration_bucket."""
    if us < 0:
        return -_bucket(-us) - 1
    bits = us.bit_length()
    quarter = (us >> (bits - 3)) & 3 if bits >= 3 else 0
    return 4 * bits + quarter


def _encoded(values: Sequence[float]) -> str:
    """Frozen copy of app.analytics.daily_counts.encode_durations."""
    packed = array("d", map(float, values))
    if sys.byteorder == "little":
        packed.byteswap()
    return packed.tobytes().hex()


def _decoded(text: str) -> "array[float]":
    values = array("d", bytes.fromhex(text))
    if sys.byteorder == "little":
        values.byteswap()
    return values


def _insert(bind: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), INSERT_BATCH):
        bind.execute(sa.insert(table), rows[start : start + INSERT_BATCH])


def _split_durations(durations: sa.Table) -> None:
    """Each exit row's durations (exact integer microseconds held as doubles) into their buckets,
    merged over the stages moved to. The rows are per stage and day (a few thousand however long the
    history), read in key order a batch at a time."""
    bind = op.get_bind()
    x = EXITS.c
    query = sa.select(x.from_stage_id, x.day, x.to_stage_id, x.durations).order_by(
        x.from_stage_id, x.day, x.to_stage_id
    )
    split: dict[tuple[int, int, date], list[float]] = {}
    offset = 0
    while rows := list(bind.execute(query.limit(BATCH).offset(offset))):
        for stage_id, day, _, text in rows:
            for value in _decoded(text):
                split.setdefault((stage_id, _bucket(int(value)), day), []).append(value)
        offset += len(rows)
    _insert(
        bind,
        durations,
        [
            {"from_stage_id": s, "bucket": b, "day": d, "exits": len(us), "durations": _encoded(sorted(us))}
            for (s, b, d), us in split.items()
        ],
    )


def _day(at: datetime) -> date:
    """The UTC day of a stored time (SQLite returns it naive, in UTC; PostgreSQL aware)."""
    return (at if at.tzinfo is None else at.astimezone(UTC)).date()


def _batches(bind: sa.Connection) -> Iterator[list[sa.Row[Any]]]:
    t = TRANSITIONS
    query = sa.select(
        t.c.id, t.c.from_stage_id, t.c.to_stage_id, t.c.at, t.c.from_stage_entered_at, t.c.deal_id
    )
    last_id = 0
    while rows := list(bind.execute(query.where(t.c.id > last_id).order_by(t.c.id).limit(BATCH))):
        yield rows
        last_id = rows[-1].id


def _durations_per_target() -> None:
    """Back to 0008's layout: each exit row's durations again, per stage moved to, counted from the
    transitions as 0008 did (the buckets do not say where each exit went)."""
    bind = op.get_bind()
    stages = set(bind.scalars(sa.select(STAGES.c.id)))
    exited: dict[tuple[int, date, int], list[int]] = {}
    for rows in _batches(bind):
        for row in rows:
            if row.from_stage_id in stages and row.from_stage_entered_at is not None:
                target = row.to_stage_id if row.to_stage_id is not None else UNMAPPED_STAGE
                key = (row.from_stage_id, _day(row.from_stage_entered_at), target)
                us = (row.at - row.from_stage_entered_at) // timedelta(microseconds=1)
                exited.setdefault(key, []).append(us)
    x = EXITS.c
    statement = (
        sa.update(EXITS)
        .where(
            x.from_stage_id == sa.bindparam("key_stage"),
            x.day == sa.bindparam("key_day"),
            x.to_stage_id == sa.bindparam("key_target"),
        )
        .values(durations=sa.bindparam("text"))
    )
    rows = [
        {"key_stage": s, "key_day": d, "key_target": t, "text": _encoded(sorted(us))}
        for (s, d, t), us in exited.items()
    ]
    for start in range(0, len(rows), INSERT_BATCH):
        bind.execute(statement, rows[start : start + INSERT_BATCH])


def _count_outcomes(outcomes: sa.Table) -> None:
    """Each deal's entries under the stage its latest transition (highest id) went to, as
    app.analytics.daily_counts keeps them; none for a deal whose latest transition went to an
    unmapped (or since deleted) stage, and none into such a stage."""
    bind = op.get_bind()
    stages = set(bind.scalars(sa.select(STAGES.c.id)))
    histories: dict[int, list[tuple[int, int | None, datetime]]] = {}
    for rows in _batches(bind):
        for row in rows:
            to_stage = row.to_stage_id if row.to_stage_id in stages else None
            histories.setdefault(row.deal_id, []).append((row.id, to_stage, row.at))
    counted: dict[tuple[int, date, int], int] = {}
    for moves in histories.values():
        outcome = max(moves)[1]
        if outcome is None:
            continue
        for _, to_stage, at in moves:
            if to_stage is not None:
                key = (outcome, _day(at), to_stage)
                counted[key] = counted.get(key, 0) + 1
    _insert(
        bind,
        outcomes,
        [{"outcome_stage_id": o, "day": d, "stage_id": s, "entries": n} for (o, d, s), n in counted.items()],
    )
