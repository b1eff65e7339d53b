"""Every template in the library provisions into each CRM sandbox, and a re-run writes nothing.

Database-independent (the mapping code is covered on both backends elsewhere), so SQLite only; the
library is split into groups so amoCRM's 50-pipeline limit is not reached in one account.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.migrate import upgrade
from funnel_templates.loader import library
from tests.funnels.conftest import Provisioner
from tests.funnels.test_provision import assert_crm_matches
from tests.support.crm import crm_sandbox
from tests.support.db import open_sessions

KEYS = sorted(library())
GROUP = 27  # two groups, each under amoCRM's 50 pipelines per account


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    return url


@pytest.mark.slow(seconds=16)  # provisions a share of the whole library
@pytest.mark.parametrize("crm", ["bitrix24", "amocrm"])
@pytest.mark.parametrize("group", range((len(KEYS) + GROUP - 1) // GROUP))
async def test_every_template_provisions(crm: str, group: int, tmp_path: Path, sqlite_url: str) -> None:
    url = sqlite_url
    settings = Settings(
        database_url=url,
        data_dir=tmp_path,
        api_token=SecretStr("test-token-1234567890"),
        secret_key=SecretStr("7sGqz8pM5Y2Jw8m3b7yS0gR5tW1vN9cX4eK6hL2dQ0A="),
        scheduler_enabled=False,
    )
    with crm_sandbox(crm, speed=100.0) as sandbox:
        async with open_sessions(url) as sessions:
            record = sandbox.connection(settings)
            async with sessions.begin() as session:
                session.add(record)
            p = Provisioner(sandbox, sessions, settings, record)
            for key in KEYS[group * GROUP : (group + 1) * GROUP]:
                template = library()[key]
                outcome = await p.run(template)
                assert outcome.applied, f"{key}: {outcome.error}"
                await assert_crm_matches(p, template)
                sandbox.reset_stats()
                again = await p.run(template)
                assert not again.plan.has_writes and sandbox.writes() == 0, key
