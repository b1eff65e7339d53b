"""The service over real HTTP on both databases: health, auth, and the template API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from tests.support import web
from tests.support.cli import run_cli
from tests.support.server import serve_asgi

TOKEN = "test-token-1234567890"


@pytest.fixture
def service_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    settings = Settings(
        database_url=database_url, api_token=SecretStr(TOKEN), data_dir=tmp_path, scheduler_enabled=False
    )
    with serve_asgi(create_app(settings)) as url:
        yield url


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_healthz_round_trips_the_database(service_url: str) -> None:
    response = web.get(f"{service_url}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc"])
def test_api_refuses_without_the_token(service_url: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = web.get(f"{service_url}/api/templates", headers=headers)
    assert response.status_code == 401
    assert "API token" in response.json()["detail"]


def test_api_and_cli_return_the_same_templates(service_url: str) -> None:
    api = web.get(f"{service_url}/api/templates", headers=auth()).json()
    cli = run_cli("templates", "list", "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == api
    assert "general.typical" in {t["key"] for t in api}

    one = web.get(f"{service_url}/api/templates/general.typical", headers=auth())
    shown = run_cli("templates", "show", "general.typical", "--json")
    assert one.status_code == 200 and json.loads(shown.stdout) == one.json()
    assert one.json()["stages"][1]["sla"]["within"] == "2m"


def test_api_filters_by_niche_and_rejects_unknown(service_url: str) -> None:
    typical = web.get(f"{service_url}/api/templates", params={"niche": "general"}, headers=auth()).json()
    assert [t["key"] for t in typical] == ["general.typical"]
    missing = web.get(f"{service_url}/api/templates", params={"niche": "nope"}, headers=auth())
    assert missing.status_code == 404 and "unknown niche 'nope'" in missing.json()["detail"]
    unknown = web.get(f"{service_url}/api/templates/nope.nope", headers=auth())
    assert unknown.status_code == 404 and "no template with key 'nope.nope'" in unknown.json()["detail"]
