"""Migrations upgrade and downgrade on SQLite and PostgreSQL, and match the models exactly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import JSON, Boolean, column, insert, inspect, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnClause

from app.db import Base, UTCDateTime, create_engine
from app.migrate import current_head, downgrade, upgrade

TABLES = {
    "connections",
    "funnels",
    "stages",
    "deals",
    "stage_transitions",
    "inbox_events",
    "outbox_commands",
}


def _inspect(url: str) -> tuple[set[str], str | None, list[object]]:
    async def run() -> tuple[set[str], str | None, list[object]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:

                def read(sync: Connection) -> tuple[set[str], str | None, list[object]]:
                    context = MigrationContext.configure(sync, opts={"compare_type": True})
                    diff = compare_metadata(context, Base.metadata) if context.get_current_revision() else []
                    return set(inspect(sync).get_table_names()), context.get_current_revision(), diff

                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    import app.models  # noqa: F401  (all tables on Base.metadata for the comparison)

    upgrade(empty_database_url)
    tables, revision, diff = _inspect(empty_database_url)
    assert tables >= TABLES
    assert revision == current_head()
    assert diff == [], f"models and migrations disagree: {diff}"

    downgrade(empty_database_url, "base")
    tables, revision, _ = _inspect(empty_database_url)
    assert not (TABLES & tables)
    assert revision is None

    upgrade(empty_database_url)
    tables, revision, _ = _inspect(empty_database_url)
    assert tables >= TABLES and revision == current_head()


def test_0002_backfills_from_stage_entered_at(empty_database_url: str) -> None:
    """Rows written before 0002 get the `at` of the same deal's previous transition (by at, then id);
    a deal's first transition stays NULL."""
    upgrade(empty_database_url, "0001")
    # (id, deal, minutes): deal 1 in order; deal 2 moved twice within one stamp (the id decides);
    # deal 3 stored out of time order (the time decides, not the id); deal 4 only created.
    transitions = [
        (1, 1, 0), (2, 1, 10), (3, 1, 25),
        (4, 2, 0), (5, 2, 7), (6, 2, 7),
        (8, 3, 30), (9, 3, 5), (7, 3, 20),
        (10, 4, 3),
    ]  # fmt: skip
    previous = {1: None, 2: 0, 3: 10, 4: None, 5: 0, 6: 7, 9: None, 7: 5, 8: 20, 10: None}

    async def seed() -> None:
        engine = create_engine(empty_database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    insert(CONNECTIONS).values(
                        id=1, name="c", crm="bitrix24", base_url="http://x/", credentials_encrypted="x",
                        settings={}, status="active", created_at=T0, updated_at=T0,
                    )
                )  # fmt: skip
                for deal in (1, 2, 3, 4):
                    await connection.execute(
                        insert(DEALS).values(
                            id=deal, connection_id=1, crm_deal_id=str(deal), crm_pipeline_id="5",
                            crm_stage_id="C5:NEW", managed=True, title="", fields={},
                            crm_updated_at=T0, created_at=T0, updated_at=T0,
                        )
                    )  # fmt: skip
                for id_, deal, minutes in transitions:  # one by one, in the order listed
                    await connection.execute(
                        insert(TRANSITIONS).values(
                            id=id_, deal_id=deal, to_crm_stage_id="C5:NEW", source="webhook",
                            at=T0 + timedelta(minutes=minutes), created_at=T0,
                        )
                    )  # fmt: skip
        finally:
            await engine.dispose()

    async def read(*columns: ColumnClause[Any]) -> list[tuple[Any, ...]]:
        engine = create_engine(empty_database_url)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(select(*columns).order_by(TRANSITIONS.c.id))
                return [tuple(row) for row in rows]
        finally:
            await engine.dispose()

    asyncio.run(seed())
    upgrade(empty_database_url)
    assert dict(asyncio.run(read(TRANSITIONS.c.id, TRANSITIONS.c.from_stage_entered_at))) == {
        id_: None if minutes is None else T0 + timedelta(minutes=minutes) for id_, minutes in previous.items()
    }
    # And back down to 0001 (SQLite rebuilds the table to drop the column): the rows stay.
    downgrade(empty_database_url, "0001")
    assert _inspect(empty_database_url)[1] == "0001"
    assert asyncio.run(read(TRANSITIONS.c.id, TRANSITIONS.c.at)) == [
        (id_, T0 + timedelta(minutes=minutes)) for id_, _, minutes in sorted(transitions)
    ]


# Plain table clauses for the backfill test, which writes at 0001 (the models describe head).
T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
CONNECTIONS = table(
    "connections",
    *map(column, ("id", "name", "crm", "base_url", "credentials_encrypted", "status")),
    column("settings", JSON()),
    column("created_at", UTCDateTime()),
    column("updated_at", UTCDateTime()),
)
DEALS = table(
    "deals",
    *map(column, ("id", "connection_id", "crm_deal_id", "crm_pipeline_id", "crm_stage_id", "title")),
    column("managed", Boolean()),
    column("fields", JSON()),
    column("crm_updated_at", UTCDateTime()),
    column("created_at", UTCDateTime()),
    column("updated_at", UTCDateTime()),
)
TRANSITIONS = table(
    "stage_transitions",
    *map(column, ("id", "deal_id", "to_crm_stage_id", "source")),
    column("at", UTCDateTime()),
    column("created_at", UTCDateTime()),
    column("from_stage_entered_at", UTCDateTime()),
)
