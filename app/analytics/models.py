"""Daily stage counts: the funnel analytics' entries and exits pre-aggregated per UTC day.

Kept by the mirror in the transaction that writes the transitions (app.analytics.daily_counts), so
they always equal what a count over stage_transitions gives. The page reads them for the whole days
inside its period and counts the partial days at its edges from the transitions themselves.
Soft-deleted deals are included here, as in the transitions table; the page subtracts their share
(they are few) the way it always has.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import Date, ForeignKey, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

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
    # Each exit's time in the stage, in microseconds, comma-separated in no particular order: the
    # page's exact medians are sorted from these rather than from a pass over the transitions.
    durations: Mapped[str] = mapped_column(Text)
