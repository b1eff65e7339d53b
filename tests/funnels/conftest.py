"""Provisioning fixtures: a CRM sandbox per test, a migrated database, a stored connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.connections.models import Connection
from app.funnels.service import ProvisionOutcome, provision
from funnel_templates.schema import FunnelTemplate
from tests.support.crm import CRMSandbox, crm_sandbox, settings_for
from tests.support.db import open_sessions


@pytest.fixture
def sandbox(crm: str) -> Iterator[CRMSandbox]:
    with crm_sandbox(crm) as box:
        yield box


@dataclass
class Provisioner:
    sandbox: CRMSandbox
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    record: Connection

    async def run(self, template: FunnelTemplate, *, dry_run: bool = False) -> ProvisionOutcome:
        connector = self.sandbox.connector()
        try:
            return await provision(
                self.sessions, self.settings, self.record, connector, template, dry_run=dry_run
            )
        finally:
            await connector.aclose()


@pytest.fixture
async def provisioner(sandbox: CRMSandbox, database_url: str, tmp_path: Path) -> AsyncIterator[Provisioner]:
    settings = settings_for(tmp_path, database_url)
    async with open_sessions(database_url) as sessions:
        record = sandbox.connection(settings)
        async with sessions.begin() as session:
            session.add(record)
        yield Provisioner(sandbox, sessions, settings, record)
