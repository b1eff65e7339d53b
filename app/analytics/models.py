"""Daily stage counts: the funnel analytics' entries and exits pre-aggregated per UTC day.

Kept by the mirror in the transaction that writes the transitions (app.analytics.daily_counts), so
they always equal what a count over stage_transitions gives. The page reads them for the whole days
inside its period and counts the partial days at its edges from the transitions themselves.
Soft-deleted deals are included here, as in the transitions table; the page subtracts their share
(they are few) the way it always has.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import BigInteger, Date, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.deals.models import Deal

# to_stage_id of an exit to a stage FunnelSync does not map (the transition's to_stage_id is NULL):
# a key column cannot be NULL, and no stage has id 0.
UNMAPPED_STAGE = 0


class DailyStageEntries(Base):
    """Transitions into a stage whose `at` falls on the day."""

    __tablename__ = "daily_stage_entries"

    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    entries: Mapped[int] = mapped_column(Integer)


class DailyStageExits(Base):
    """Transitions out of a stage whose `from_stage_entered_at` (the entry they end) falls on the day,
    per stage moved to. No foreign key on to_stage_id: it holds UNMAPPED_STAGE, and a target stage
    deleted later is simply one the funnel no longer has (the page counts it as elsewhere)."""

    __tablename__ = "daily_stage_exits"

    from_stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    to_stage_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exits: Mapped[int] = mapped_column(Integer)


class DailyStageDurations(Base):
    """The same exits' times in the stage, per stage, day of entry and duration bucket (whatever the
    stage moved to: the median is over all of a stage's exits).

    A bucket is a range of durations (app.analytics.daily_counts.duration_bucket: a quarter of an
    octave of microseconds), so buckets sort as their durations do. The page sums the counts per bucket (one
    small row per stage, day and bucket, read from the covering index), finds the bucket(s) holding
    the middle rank, and reads only those durations: a few percent of them, instead of every exit
    of the period (about 300,000 over 180 days of 100,000 deals, 4.9 MB of text)."""

    __tablename__ = "daily_stage_durations"
    # The primary key serves the durations of one stage's bucket over a range of days (the medians);
    # the index the counts per bucket over the days around a period's whole months (at most about 60
    # days; the months come from MonthlyStageDurations), without reading the rows' durations. Day
    # before bucket: a range per stage, whose few thousand rows are sorted for the GROUP BY. (Bucket
    # first, the whole period read from this table, SQLite needed every bucket listed to seek
    # 512 ranges per stage, 12 ms for 180 days.)
    __table_args__ = (Index("ix_daily_stage_durations_counts", "from_stage_id", "day", "bucket", "exits"),)

    from_stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    exits: Mapped[int] = mapped_column(Integer)
    # The exits' durations in microseconds: 16 hex digits each, the big-endian IEEE 754 double
    # (app.analytics.daily_counts.encode_durations); each write's in ascending order, appended.
    durations: Mapped[str] = mapped_column(Text)


# The funnel's soft-deleted deals (app.analytics.transitions.deleted_deals, read before the rest of
# every analytics page): without it that read scans all the funnel's deals in
# ix_deals_funnel_stage_entered (100,000 index entries, 10-18 ms on SQLite) to find a handful. It
# holds only deleted deals, so the mirror's writes of live ones do not touch it. Declared here, by
# the query it serves, on the deals table.
Index(
    "ix_deals_funnel_deleted",
    Deal.funnel_id,
    sqlite_where=Deal.deleted_at.is_not(None),
    postgresql_where=Deal.deleted_at.is_not(None),
)


class DailyOutcomeEntries(Base):
    """Transitions into a stage whose `at` falls on the day, per the stage the deal's latest
    transition went to (its outcome so far: what the deal's current stage is, as the mirror keeps
    both together). The page's "entries whose deal is now won" are the rows whose outcome is the
    success stage; the mirror moves a deal's entries from one outcome to the next whenever it records
    a transition of the deal (app.analytics.daily_counts). Kept for every stage, not only success
    stages, so the rows do not depend on the stages' semantics. Deleted deals are included, and
    subtracted by the page as elsewhere."""

    __tablename__ = "daily_outcome_entries"

    outcome_stage_id: Mapped[int] = mapped_column(
        ForeignKey("stages.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"), primary_key=True)
    entries: Mapped[int] = mapped_column(Integer)


# Key values standing for NULL in DailyLiveDeals (key columns cannot be NULL): a CRM stage the funnel
# does not map (no stage has id 0), a deal with no stage entry time (no page's period reaches year 1),
# a deal with no loss reason (app.deals.loss_reasons never derives an empty one), a deal with no
# currency (the connectors read an empty one as None).
NO_STAGE = 0
NO_DAY = date(1, 1, 1)
NO_REASON = ""
NO_CURRENCY = ""


class DailyLiveDeals(Base):
    """The funnels' live (not soft-deleted) deals per current stage, UTC day they entered it, loss
    reason and currency: how many, and their amounts in hundredths (exact on both databases; the
    column is NUMERIC(18, 2)). The analytics page's stage totals and loss reasons, the board's totals
    per stage and currency and the overview's deals per funnel read these few thousand rows instead
    of every deal of the funnel (100,000 index entries or, for the board's currencies, deal rows;
    the loss reasons also sorted 40,000 of them for their GROUP BY).

    Kept by triggers on `deals` (migration 0013), not by the application: every write path changes
    them in the statement that changes the deal, including those no mirror code runs (the loss-reason
    re-derivation's bulk UPDATE, ON DELETE SET NULL from a deleted funnel or stage, ON DELETE CASCADE
    from a deleted connection, migrations). No foreign keys: a deleted funnel's rows are counted down
    to zero by the SET NULL of its deals, which a cascade running first would turn into rows for a
    funnel that no longer exists. Rows at zero stay (readers skip them)."""

    __tablename__ = "daily_live_deals"

    funnel_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # NO_STAGE: unmapped
    day: Mapped[date] = mapped_column(Date, primary_key=True)  # NO_DAY: no entry time
    loss_reason: Mapped[str] = mapped_column(String(255), primary_key=True)  # NO_REASON: none
    currency: Mapped[str] = mapped_column(String(8), primary_key=True)  # NO_CURRENCY: none
    deals: Mapped[int] = mapped_column(Integer)
    amount_hundredths: Mapped[int] = mapped_column(BigInteger)


# The board's list of who is responsible for the funnel's live deals (app.analytics.board): from the
# index alone, where the GROUP BY read every deal row of the funnel (55 ms at 100,000 deals, SQLite).
Index(
    "ix_deals_funnel_responsible",
    Deal.funnel_id,
    Deal.responsible_id,
    sqlite_where=Deal.deleted_at.is_(None),
    postgresql_where=Deal.deleted_at.is_(None),
)


class MonthlyStageEntries(Base):
    """DailyStageEntries summed per calendar month (`month`: its first day). The rollups are kept by
    triggers on the daily tables (migration 0014), in the statement that changes a daily row,
    whatever changes it; a period's whole months are read from them and the days around those from
    the daily rows (app.analytics.daily_flow). No foreign keys, as DailyLiveDeals. A migration that
    rebuilds a daily table (SQLite's batch ALTER) drops its triggers and must create them again."""

    __tablename__ = "monthly_stage_entries"

    stage_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    entries: Mapped[int] = mapped_column(Integer)


class MonthlyStageExits(Base):
    """DailyStageExits summed per calendar month (see MonthlyStageEntries)."""

    __tablename__ = "monthly_stage_exits"

    from_stage_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    to_stage_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exits: Mapped[int] = mapped_column(Integer)


class MonthlyStageDurations(Base):
    """DailyStageDurations' counts summed per calendar month (see MonthlyStageEntries); the durations
    themselves stay in the daily rows, which the medians read for one bucket. Month before bucket:
    a period's months are one range per stage."""

    __tablename__ = "monthly_stage_durations"

    from_stage_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    exits: Mapped[int] = mapped_column(Integer)
