"""Migrations upgrade and downgrade on SQLite and PostgreSQL, and match the models exactly."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from app.db import Base, create_engine
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
