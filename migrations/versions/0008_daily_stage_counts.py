"""daily stage counts: funnel analytics' entries and exits pre-aggregated per UTC day (issue #14)

Each exit row also keeps the durations of its exits (microseconds, as 16 hex digits each: the
big-endian IEEE 754 double, in ascending order), so the page's exact medians need no pass over the
transitions either.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 19:00:00.000000
"""

import sys
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of app.analytics.models.UNMAPPED_STAGE: a migration must not change meaning when the
# application's code moves on.
UNMAPPED_STAGE = 0
BATCH = 10_000  # transitions read per statement
INSERT_BATCH = 1_000  # count rows written per statement

TRANSITIONS = sa.table(
    "stage_transitions",
    sa.column("id", sa.Integer()),
    sa.column("from_stage_id", sa.Integer()),
    sa.column("to_stage_id", sa.Integer()),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("from_stage_entered_at", sa.DateTime(timezone=True)),
)
STAGES = sa.table("stages", sa.column("id", sa.Integer()))


def upgrade() -> None:
    entries = op.create_table(
        "daily_stage_entries",
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stage_id"],
            ["stages.id"],
            name=op.f("fk_daily_stage_entries_stage_id_stages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("stage_id", "day", name=op.f("pk_daily_stage_entries")),
    )
    exits = op.create_table(
        "daily_stage_exits",
        sa.Column("from_stage_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("to_stage_id", sa.Integer(), nullable=False),
        sa.Column("exits", sa.Integer(), nullable=False),
        sa.Column("durations", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_stage_id"],
            ["stages.id"],
            name=op.f("fk_daily_stage_exits_from_stage_id_stages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("from_stage_id", "day", "to_stage_id", name=op.f("pk_daily_stage_exits")),
    )
    _backfill(entries, exits)


def downgrade() -> None:
    op.drop_table("daily_stage_exits")
    op.drop_table("daily_stage_entries")


# --- backfill -------------------------------------------------------------------------------------


def _day(at: datetime) -> date:
    """The UTC day of a stored time (SQLite returns it naive, in UTC; PostgreSQL aware)."""
    return (at if at.tzinfo is None else at.astimezone(UTC)).date()


def _microseconds(start: datetime, end: datetime) -> int:
    """An exit's duration, as app.analytics.daily_counts stores it (both times read the same way)."""
    return (end - start) // timedelta(microseconds=1)


def _encoded(values: list[int]) -> str:
    """Frozen copy of app.analytics.daily_counts.encode_durations."""
    packed = array("d", map(float, values))
    if sys.byteorder == "little":
        packed.byteswap()
    return packed.tobytes().hex()


def _batches(bind: sa.Connection) -> Iterator[list[sa.Row[Any]]]:
    """Every transition in id order, BATCH at a time (keyset, so each read is an index range)."""
    t = TRANSITIONS
    query = sa.select(t.c.id, t.c.from_stage_id, t.c.to_stage_id, t.c.at, t.c.from_stage_entered_at)
    last_id = 0
    while True:
        rows = list(bind.execute(query.where(t.c.id > last_id).order_by(t.c.id).limit(BATCH)))
        if not rows:
            return
        yield rows
        last_id = rows[-1].id


def _backfill(entries: sa.Table, exits: sa.Table) -> None:
    """Count every existing transition, as app.analytics.daily_counts does for new ones. The counts
    are per stage and day (a few thousand rows however long the history), so they are summed in
    memory over batches of transitions and written once. A transition whose stage no longer exists
    (its id was set NULL when the stage went) counts nowhere, as in the analytics' own queries."""
    bind = op.get_bind()
    stages = set(bind.scalars(sa.select(STAGES.c.id)))
    entered: Counter[tuple[int, date]] = Counter()
    exited: dict[tuple[int, date, int], list[int]] = {}
    for rows in _batches(bind):
        for row in rows:
            if row.to_stage_id in stages:
                entered[(row.to_stage_id, _day(row.at))] += 1
            if row.from_stage_id in stages and row.from_stage_entered_at is not None:
                target = row.to_stage_id if row.to_stage_id is not None else UNMAPPED_STAGE
                key = (row.from_stage_id, _day(row.from_stage_entered_at), target)
                exited.setdefault(key, []).append(_microseconds(row.from_stage_entered_at, row.at))
    _insert(bind, entries, [{"stage_id": s, "day": d, "entries": n} for (s, d), n in entered.items()])
    _insert(
        bind,
        exits,
        [
            {
                "from_stage_id": s,
                "day": d,
                "to_stage_id": t,
                "exits": len(us),
                "durations": _encoded(sorted(us)),
            }
            for (s, d, t), us in exited.items()
        ],
    )


def _insert(bind: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), INSERT_BATCH):
        bind.execute(sa.insert(table), rows[start : start + INSERT_BATCH])
