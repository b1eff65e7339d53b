"""Bitrix24Connector.list_users against the sandbox portal's staff (user.get, paged by 50)."""

from __future__ import annotations

import pytest

from connectors.base import CRMError
from connectors.bitrix24.client import Bitrix24Connector
from connectors.bitrix24.sandbox.users import DEPARTMENT, DISMISSED_ID
from tests.connectors.bitrix24.conftest import Sandbox, running_sandbox


async def test_every_user_is_listed_across_pages_with_names(
    sandbox: Sandbox, connector: Bitrix24Connector
) -> None:
    sandbox.reset_stats()
    users = await connector.list_users()
    by_id = {u.id: u for u in users}
    assert len(users) == 3 + len(DEPARTMENT) > 50  # more than one page of 50
    assert sandbox.stats()["by_method"]["user.get"] == 2  # followed `next` once
    assert by_id["1"].name == "Ирина Соколова" and by_id["1"].active
    assert by_id["7"].name == "Павел Орлов"
    # A dismissed manager is still listed (old deals stay theirs), marked inactive.
    assert by_id[str(DISMISSED_ID)].name == "Олег Кузнецов" and not by_id[str(DISMISSED_ID)].active
    assert [u.id for u in users] == sorted((u.id for u in users), key=int)


async def test_without_the_user_scope_the_refusal_is_a_crm_error() -> None:
    with running_sandbox(scopes=("crm", "task")) as box:
        connector = box.webhook()
        try:
            with pytest.raises(CRMError) as refused:
                await connector.list_users()
        finally:
            await connector.aclose()
    assert refused.value.crm_code == "insufficient_scope"
