"""monthly sums of the daily stage counts, kept by triggers on the daily tables (issue #14)

The 180-day analytics page summed about 50,000 daily rows of exits per duration bucket (and the
exits and entries per day) for its whole days; the whole calendar months inside a period now come
from one row per month instead of one per day, the days around them from the daily rows, whose
counts index now puts the day before the bucket (app.analytics.models.MonthlyStageEntries and the
others), the days around them from the daily rows. The triggers add each daily row's change to its
month in the statement that makes it, whatever makes it (the mirror's upserts, a rebuild's DELETE
and INSERTs, a deleted stage's cascade), so the months always equal the sum of their days.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 21:00:00.000000
"""

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


@dataclass(frozen=True)
class Rollup:
    daily: str
    monthly: str
    keys: tuple[str, ...]  # the daily key but its day, in the monthly key's order around `month`
    month_at: int  # where `month` goes in the monthly key
    count: str


ROLLUPS = (
    Rollup("daily_stage_entries", "monthly_stage_entries", ("stage_id",), 1, "entries"),
    Rollup("daily_stage_exits", "monthly_stage_exits", ("from_stage_id", "to_stage_id"), 1, "exits"),
    Rollup("daily_stage_durations", "monthly_stage_durations", ("from_stage_id", "bucket"), 1, "exits"),
)


def _monthly_key(rollup: Rollup) -> list[str]:
    keys = list(rollup.keys)
    keys.insert(rollup.month_at, "month")
    return keys


def _month(dialect: str, day: str) -> str:
    return f"date({day}, 'start of month')" if dialect == "sqlite" else f"date_trunc('month', {day})::date"


def _add(dialect: str, rollup: Rollup, row: str, sign: str) -> str:
    """Add (sign "") or take away (sign "-") a daily row (`row`: NEW or OLD) to its month."""
    key = _monthly_key(rollup)
    values = [f"{row}.{k}" if k != "month" else _month(dialect, f"{row}.day") for k in key]
    columns = ", ".join([*key, rollup.count])
    return (
        f"INSERT INTO {rollup.monthly} ({columns}) VALUES ({', '.join(values)}, {sign}{row}.{rollup.count})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET"
        f" {rollup.count} = {rollup.monthly}.{rollup.count} + excluded.{rollup.count};"
    )


def _sqlite_triggers(rollup: Rollup) -> list[str]:
    name, watched = rollup.monthly, ", ".join([*rollup.keys, "day", rollup.count])
    take, add = _add("sqlite", rollup, "OLD", "-"), _add("sqlite", rollup, "NEW", "")
    return [
        f"CREATE TRIGGER {name}_insert AFTER INSERT ON {rollup.daily} BEGIN {add} END",
        f"CREATE TRIGGER {name}_update AFTER UPDATE OF {watched} ON {rollup.daily} BEGIN {take} {add} END",
        f"CREATE TRIGGER {name}_delete AFTER DELETE ON {rollup.daily} BEGIN {take} END",
    ]


def _postgresql_triggers(rollup: Rollup) -> list[str]:
    name, watched = rollup.monthly, ", ".join([*rollup.keys, "day", rollup.count])
    take, add = _add("postgresql", rollup, "OLD", "-"), _add("postgresql", rollup, "NEW", "")
    return [
        f"CREATE FUNCTION {name}_keep() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        f"  IF TG_OP <> 'INSERT' THEN\n    {take}\n  END IF;\n"
        f"  IF TG_OP <> 'DELETE' THEN\n    {add}\n  END IF;\n"
        "  RETURN NULL;\n"
        "END\n$$",
        f"CREATE TRIGGER {name}_insert AFTER INSERT ON {rollup.daily} FOR EACH ROW EXECUTE FUNCTION {name}_keep()",
        f"CREATE TRIGGER {name}_update AFTER UPDATE OF {watched} ON {rollup.daily} FOR EACH ROW"
        f" EXECUTE FUNCTION {name}_keep()",
        f"CREATE TRIGGER {name}_delete AFTER DELETE ON {rollup.daily} FOR EACH ROW EXECUTE FUNCTION {name}_keep()",
    ]


def _sum_existing(dialect: str, rollup: Rollup) -> str:
    key = _monthly_key(rollup)
    selected = [k if k != "month" else _month(dialect, "day") for k in key]
    positions = ", ".join(str(i + 1) for i in range(len(key)))
    return (
        f"INSERT INTO {rollup.monthly} ({', '.join(key)}, {rollup.count})"
        f" SELECT {', '.join(selected)}, sum({rollup.count}) FROM {rollup.daily} GROUP BY {positions}"
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for rollup in ROLLUPS:
        key = _monthly_key(rollup)
        # No foreign keys, as daily_live_deals (0013): a deleted stage's cascade on the daily rows
        # counts its months down to zero; a cascade on the months running first would have the
        # triggers write months for a stage that is gone.
        op.create_table(
            rollup.monthly,
            *(sa.Column(k, sa.Date() if k == "month" else sa.Integer(), nullable=False) for k in key),
            sa.Column(rollup.count, sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint(*key, name=op.f(f"pk_{rollup.monthly}")),
        )
        op.execute(_sum_existing(dialect, rollup))
        for statement in _sqlite_triggers(rollup) if dialect == "sqlite" else _postgresql_triggers(rollup):
            op.execute(statement)
    # The days around the months are now a short range (at most about 60 days): read them by day,
    # then bucket, and sort the few thousand rows for the GROUP BY, rather than seek each of the
    # 512 buckets in each stage's (bucket, day) ranges.
    op.drop_index("ix_daily_stage_durations_counts", table_name="daily_stage_durations")
    op.create_index(
        "ix_daily_stage_durations_counts",
        "daily_stage_durations",
        ["from_stage_id", "day", "bucket", "exits"],
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_index("ix_daily_stage_durations_counts", table_name="daily_stage_durations")
    op.create_index(
        "ix_daily_stage_durations_counts",
        "daily_stage_durations",
        ["from_stage_id", "bucket", "day", "exits"],
    )
    for rollup in ROLLUPS:
        for event in ("insert", "update", "delete"):
            on = "" if dialect == "sqlite" else f" ON {rollup.daily}"
            op.execute(f"DROP TRIGGER {rollup.monthly}_{event}{on}")
        if dialect == "postgresql":
            op.execute(f"DROP FUNCTION {rollup.monthly}_keep()")
        op.drop_table(rollup.monthly)
