"""Run async service code from synchronous entry points (CLI commands) with a database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import migrate
from app.config import Settings, get_settings
from app.db import create_engine, session_factory

T = TypeVar("T")

Sessions = async_sessionmaker[AsyncSession]


def run_with_database(work: Callable[[Settings, Sessions], Awaitable[T]]) -> T:
    """Open the configured database (migrating the embedded SQLite default first), run `work`,
    close the engine."""
    settings = get_settings()
    if settings.should_auto_migrate:
        migrate.upgrade(settings.resolved_database_url)

    async def main() -> T:
        engine = create_engine(settings.resolved_database_url, settings.resolved_pool_size)
        try:
            return await work(settings, session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())
