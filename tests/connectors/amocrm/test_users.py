"""AmoCRMConnector.list_users against the sandbox (GET /api/v4/users, 250 a page, admins only)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from connectors.amocrm.sandbox import SandboxConfig, create_sandbox_app
from connectors.amocrm.sandbox.state import ADMIN_ID, MANAGER_ID
from connectors.base import PermanentError
from tests.connectors.amocrm.conftest import ConnectorFactory, Sandbox
from tests.support.server import serve_asgi


@contextmanager
def account_with(users: list[dict[str, Any]], **options: Any) -> Iterator[tuple[Sandbox, dict[str, Any]]]:
    """A sandbox account whose user list is `users` plus the two a new account has."""
    config = SandboxConfig(subdomain="users", speed=50.0, **options)
    app = create_sandbox_app(config)
    data: dict[str, Any] = app.state.sandbox.state.data
    data["users"].extend(users)
    with serve_asgi(app) as url:
        yield Sandbox(url, config), data


async def test_users_are_read_page_by_page_with_names(make_connector: ConnectorFactory) -> None:
    staff = [{"id": 9_000_000 + n, "name": f"Менеджер {n}", "is_admin": False} for n in range(259)]
    staff[0]["is_active"] = False
    with account_with(staff) as (box, _):
        box.reset_stats()
        users = await make_connector(box).list_users()
        pages = [r for r in box.requests() if r["path"] == "/api/v4/users"]
    by_id = {u.id: u for u in users}
    assert len(users) == 261 and len(pages) == 2  # 250, then the rest
    assert by_id[str(ADMIN_ID)].name == "Администратор" and by_id[str(MANAGER_ID)].name == "Менеджер"
    assert not by_id["9000000"].active and by_id["9000001"].active


async def test_a_user_who_is_not_an_administrator_is_refused(make_connector: ConnectorFactory) -> None:
    with account_with([]) as (box, data):
        for user in data["users"]:
            user["is_admin"] = False
        with pytest.raises(PermanentError) as refused:
            await make_connector(box).list_users()
    assert refused.value.status == 403
