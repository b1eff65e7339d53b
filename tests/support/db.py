"""Async database helpers for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.models import Connection
from app.db import create_engine, session_factory
from app.funnels.models import Funnel, FunnelStage


@asynccontextmanager
async def open_sessions(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def add_funnel(
    session: AsyncSession,
    stages: Sequence[tuple[str, str]],
    *,
    template_key: str,
    name: str = "Funnel",
    pipeline_id: str = "5",
) -> tuple[Connection, Funnel]:
    """A Bitrix24 connection row and one funnel with `stages` as (code, semantics), mapped to the
    CRM stages C<pipeline>:<code>, for tests that mirror snapshots without a sandbox."""
    connection = Connection(name="b24", crm="bitrix24", base_url="http://x/", credentials_encrypted="x")
    session.add(connection)
    await session.flush()
    funnel = Funnel(
        connection_id=connection.id, template_key=template_key, name=name, crm_pipeline_id=pipeline_id
    )
    session.add(funnel)
    await session.flush()
    for sort, (code, semantics) in enumerate(stages):
        session.add(
            FunnelStage(
                funnel_id=funnel.id,
                code=code,
                name=code,
                sort=sort,
                semantics=semantics,
                crm_stage_id=f"C{pipeline_id}:{code}",
            )
        )
    await session.flush()
    return connection, funnel
