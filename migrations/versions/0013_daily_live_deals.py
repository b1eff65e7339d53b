"""live deals per funnel, stage, day of entry, loss reason and currency, kept by triggers on deals,
and an index of the live deals' responsibles (issue #14)

The analytics page's stage totals (every live deal of the funnel) and loss reasons (every lost deal
of the period, sorted for the GROUP BY) were the two longest reads left on the 180-day page, and the
board's totals per stage and currency read every deal row of the funnel (260 ms at 100,000 deals on
SQLite). They now come from daily_live_deals (app.analytics.models.DailyLiveDeals), which triggers on deals keep
in the same statement as any write of a deal: the mirror's, the loss-reason re-derivation's bulk
UPDATE, the ON DELETE SET NULL of a deleted funnel or stage, the ON DELETE CASCADE of a deleted
connection. A trigger rather than application code, so that no write path can forget them.
ix_deals_funnel_responsible (live deals only) serves the board's list of responsibles from the
index instead of the deal rows.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 20:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of app.analytics.models.NO_STAGE, NO_DAY, NO_REASON and NO_CURRENCY.
NO_STAGE = "0"
NO_DAY = "'0001-01-01'"
NO_REASON = "''"
NO_CURRENCY = "''"

# The columns whose change moves a deal between rows (or in or out of them).
KEY_COLUMNS = ("funnel_id", "stage_id", "stage_entered_at", "deleted_at", "amount", "loss_reason", "currency")


def _hundredths(dialect: str, deal: str) -> str:
    """The deal's amount in hundredths, NULL for none."""
    if dialect == "sqlite":
        # NUMERIC affinity: round() before the INTEGER cast, as a REAL like 0.1 * 100 is
        # 10.000000000000002.
        return f"CAST(round({deal}.amount * 100) AS INTEGER)"
    return f"round({deal}.amount * 100)::bigint"


def _key(dialect: str, deal: str) -> str:
    """The row a deal (`deal`: NEW, OLD or the table) counts in: funnel, stage, day, loss reason,
    currency."""
    # SQLite stores naive UTC text, whose day date() takes; PostgreSQL a timestamptz.
    day = (
        f"date({deal}.stage_entered_at)"
        if dialect == "sqlite"
        else f"({deal}.stage_entered_at AT TIME ZONE 'UTC')::date"
    )
    return (
        f"{deal}.funnel_id, coalesce({deal}.stage_id, {NO_STAGE}), coalesce({day}, {NO_DAY}),"
        f" coalesce({deal}.loss_reason, {NO_REASON}), coalesce({deal}.currency, {NO_CURRENCY})"
    )


def _row(dialect: str, deal: str, sign: str) -> str:
    """The key and counts one deal adds (sign "") or takes away (sign "-")."""
    return f"{_key(dialect, deal)}, {sign}1, {sign}coalesce({_hundredths(dialect, deal)}, 0)"


def _live(deal: str) -> str:
    return f"{deal}.funnel_id IS NOT NULL AND {deal}.deleted_at IS NULL"


COLUMNS = "(funnel_id, stage_id, day, loss_reason, currency, deals, amount_hundredths)"
ADD_UP = (
    "ON CONFLICT (funnel_id, stage_id, day, loss_reason, currency) DO UPDATE SET"
    " deals = daily_live_deals.deals + excluded.deals,"
    " amount_hundredths = daily_live_deals.amount_hundredths + excluded.amount_hundredths"
)


def _moved(dialect: str) -> str:
    """The UPDATE triggers' condition: a key column really changed (UPDATE OF fires on any SET)."""
    if dialect == "sqlite":
        return " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in KEY_COLUMNS)
    columns = ", ".join
    return f"({columns(f'OLD.{c}' for c in KEY_COLUMNS)}) IS DISTINCT FROM ({columns(f'NEW.{c}' for c in KEY_COLUMNS)})"


def _sqlite_triggers() -> list[str]:
    # SELECT ... WHERE rather than VALUES: a trigger body has no IF, and the WHERE also keeps the
    # upsert's ON CONFLICT from being parsed as a join's ON.
    take = f"INSERT INTO daily_live_deals {COLUMNS} SELECT {_row('sqlite', 'OLD', '-')} WHERE {_live('OLD')} {ADD_UP};"
    add = f"INSERT INTO daily_live_deals {COLUMNS} SELECT {_row('sqlite', 'NEW', '')} WHERE {_live('NEW')} {ADD_UP};"
    return [
        f"CREATE TRIGGER daily_live_deals_insert AFTER INSERT ON deals BEGIN {add} END",
        f"CREATE TRIGGER daily_live_deals_update AFTER UPDATE OF {', '.join(KEY_COLUMNS)} ON deals"
        f" WHEN {_moved('sqlite')} BEGIN {take} {add} END",
        f"CREATE TRIGGER daily_live_deals_delete AFTER DELETE ON deals BEGIN {take} END",
    ]


def _postgresql_triggers() -> list[str]:
    take = f"INSERT INTO daily_live_deals {COLUMNS} VALUES ({_row('postgresql', 'OLD', '-')}) {ADD_UP};"
    add = f"INSERT INTO daily_live_deals {COLUMNS} VALUES ({_row('postgresql', 'NEW', '')}) {ADD_UP};"
    return [
        "CREATE FUNCTION daily_live_deals_keep() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        f"  IF TG_OP <> 'INSERT' AND {_live('OLD')} THEN\n    {take}\n  END IF;\n"
        f"  IF TG_OP <> 'DELETE' AND {_live('NEW')} THEN\n    {add}\n  END IF;\n"
        "  RETURN NULL;\n"
        "END\n$$",
        # The WHEN conditions are checked without calling the function: the mirror's writes that
        # change no key column (title, fields, times) cost nothing here.
        "CREATE TRIGGER daily_live_deals_insert AFTER INSERT ON deals FOR EACH ROW"
        f" WHEN ({_live('NEW')}) EXECUTE FUNCTION daily_live_deals_keep()",
        f"CREATE TRIGGER daily_live_deals_update AFTER UPDATE OF {', '.join(KEY_COLUMNS)} ON deals"
        f" FOR EACH ROW WHEN ({_moved('postgresql')}) EXECUTE FUNCTION daily_live_deals_keep()",
        "CREATE TRIGGER daily_live_deals_delete AFTER DELETE ON deals FOR EACH ROW"
        f" WHEN ({_live('OLD')}) EXECUTE FUNCTION daily_live_deals_keep()",
    ]


def _count_existing(dialect: str) -> str:
    """The rows for the deals already held: what the triggers would have written for them."""
    return (
        f"INSERT INTO daily_live_deals {COLUMNS}"
        f" SELECT {_key(dialect, 'deals')}, count(*), coalesce(sum({_hundredths(dialect, 'deals')}), 0)"
        f" FROM deals WHERE {_live('deals')} GROUP BY 1, 2, 3, 4, 5"
    )


def upgrade() -> None:
    op.create_table(
        "daily_live_deals",
        sa.Column("funnel_id", sa.Integer(), nullable=False),
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("loss_reason", sa.String(length=255), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("deals", sa.Integer(), nullable=False),
        sa.Column("amount_hundredths", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "funnel_id", "stage_id", "day", "loss_reason", "currency", name=op.f("pk_daily_live_deals")
        ),
    )
    dialect = op.get_bind().dialect.name
    op.execute(_count_existing(dialect))
    live = sa.column("deleted_at").is_(None)
    op.create_index(
        "ix_deals_funnel_responsible",
        "deals",
        ["funnel_id", "responsible_id"],
        sqlite_where=live,
        postgresql_where=live,
    )
    for statement in _sqlite_triggers() if dialect == "sqlite" else _postgresql_triggers():
        op.execute(statement)


def downgrade() -> None:
    op.drop_index("ix_deals_funnel_responsible", table_name="deals")
    for event in ("insert", "update", "delete"):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"DROP TRIGGER daily_live_deals_{event}")
        else:
            op.execute(f"DROP TRIGGER daily_live_deals_{event} ON deals")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION daily_live_deals_keep()")
    op.drop_table("daily_live_deals")
