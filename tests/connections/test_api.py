"""/api/connections and /api/connections/{name}/provision over real HTTP, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.support import web
from tests.support.crm import APP_TOKEN, FAST_RETRY, CRMSandbox, crm_sandbox, settings_for
from tests.support.server import serve_asgi

AUTH = {"Authorization": "Bearer test-token-1234567890"}


@pytest.fixture
def b24() -> Iterator[CRMSandbox]:
    with crm_sandbox("bitrix24") as box:
        yield box


@pytest.fixture
def amo() -> Iterator[CRMSandbox]:
    with crm_sandbox("amocrm") as box:
        yield box


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    with (
        serve_asgi(create_app(settings_for(tmp_path, database_url))) as url,
        web.client(base_url=url, headers=AUTH, timeout=60) as client,
    ):
        yield client


def test_connections_api(api: httpx.Client, b24: CRMSandbox) -> None:
    body = {"name": "b24", "crm": "bitrix24", "webhook_url": b24.box.webhook_url, "app_token": APP_TOKEN}
    created = api.post("/api/connections", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["base_url"] == b24.url  # the webhook code is a secret: not shown
    assert b24.box.config.webhook_code not in created.text and APP_TOKEN not in created.text
    assert api.post("/api/connections", json=body).status_code == 409
    assert [c["name"] for c in api.get("/api/connections").json()] == ["b24"]
    assert api.get("/api/connections/b24").json()["crm"] == "bitrix24"
    assert api.get("/api/connections/nope").status_code == 404
    check = api.post("/api/connections/b24/check").json()
    assert check["ok"] and check["scopes"] == ["crm", "task", "user"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "crm": "bitrix24"}, "Bitrix24 needs webhook_url"),
        ({"name": "Bad Name", "crm": "amocrm", "subdomain": "a", "token": "t"}, "name must be"),
        ({"name": "x", "crm": "zoho"}, "'bitrix24', 'amocrm'"),
    ],
)
def test_bad_connection_input_is_422_with_a_message(
    api: httpx.Client, body: dict[str, str], message: str
) -> None:
    response = api.post("/api/connections", json=body)
    assert response.status_code == 422 and message in response.text
    assert api.get("/api/connections").json() == []


def test_provision_api_plans_then_applies(api: httpx.Client, b24: CRMSandbox) -> None:
    body = {"name": "b24", "crm": "bitrix24", "webhook_url": b24.box.webhook_url, "app_token": APP_TOKEN}
    assert api.post("/api/connections", json=body).status_code == 201
    b24.reset_stats()
    plan = api.post("/api/connections/b24/provision", json={"template": "general.typical"})
    assert plan.status_code == 200 and plan.json()["dry_run"] and not plan.json()["applied"]
    assert b24.writes() == 0
    applied = api.post(
        "/api/connections/b24/provision", json={"template": "general.typical", "dry_run": False}
    )
    assert applied.status_code == 200 and applied.json()["applied"]
    assert [i["action"] for i in plan.json()["plan"]["items"]] == [
        i["action"] for i in applied.json()["plan"]["items"]
    ]
    missing = api.post("/api/connections/b24/provision", json={"template": "nope.nope"})
    assert missing.status_code == 404 and "no template with key" in missing.json()["detail"]
    b24.reset_stats()
    again = api.post("/api/connections/b24/provision", json={"template": "general.typical", "dry_run": False})
    assert again.json()["plan"]["counts"].get("create", 0) == 0 and b24.writes() == 0


def test_provision_api_failure_is_502_with_the_crm_text(api: httpx.Client, b24: CRMSandbox) -> None:
    body = {"name": "b24", "crm": "bitrix24", "webhook_url": b24.box.webhook_url, "app_token": APP_TOKEN}
    api.post("/api/connections", json=body)
    b24.fail_next("fields", count=50)
    failed = api.post(
        "/api/connections/b24/provision", json={"template": "general.typical", "dry_run": False}
    )
    assert failed.status_code == 502
    assert "injected" in failed.json()["error"] and not failed.json()["applied"]
    assert "injected" in failed.json()["crm_error"]
    assert failed.json()["detail"].startswith("the CRM failed during provisioning (refused the request): ")


@pytest.mark.slow  # the service's default retry policy waits out each outage in real time
def test_provision_api_outage_is_a_503_problem_and_a_rerun_completes(
    api: httpx.Client, b24: CRMSandbox
) -> None:
    body = {"name": "b24", "crm": "bitrix24", "webhook_url": b24.box.webhook_url, "app_token": APP_TOKEN}
    assert api.post("/api/connections", json=body).status_code == 201
    request = {"template": "general.typical", "dry_run": False}

    # Down while the plan is read: nothing written, a problem instead of a bare 500.
    b24.box.fault("http_503", count=10_000)
    down = api.post("/api/connections/b24/provision", json=request)
    assert down.status_code == 503, down.text
    problem = down.json()
    assert problem["detail"].startswith("the CRM failed during provisioning (unavailable, HTTP 503): ")
    assert problem["detail"].endswith("nothing was written") and problem["error_class"] == "Retryable"
    assert (
        "503 Service Temporarily Unavailable" in problem["crm_error"] and "<html" not in problem["crm_error"]
    )
    b24.clear_faults()
    assert b24.writes() == 0

    # Down at the first write, for that request and all its retries: the plan comes back with the
    # problem; the same request again applies the rest.
    b24.reset_stats()
    assert api.post("/api/connections/b24/provision", json={**request, "dry_run": True}).status_code == 200
    reads = int(b24.box.stats()["requests"])
    b24.box.fault("http_503", count=FAST_RETRY.attempts, after=reads)
    midway = api.post("/api/connections/b24/provision", json=request)
    assert midway.status_code == 503, midway.text
    outcome = midway.json()
    assert not outcome["applied"] and outcome["plan"]["counts"]["create"] > 0
    assert outcome["detail"].startswith("the CRM failed during provisioning (unavailable): ")
    assert outcome["detail"].endswith("the same request again completes the rest")
    again = api.post("/api/connections/b24/provision", json=request)
    assert again.status_code == 200 and again.json()["applied"], again.text


def test_check_api_answers_503_while_rate_limited_and_502_for_bad_credentials(
    api: httpx.Client, amo: CRMSandbox
) -> None:
    body = {"name": "amo", "crm": "amocrm", "subdomain": amo.box.config.subdomain, "base_url": amo.url}
    assert api.post("/api/connections", json={**body, "token": amo.box.config.token}).status_code == 201
    amo.box.fault("rate_limit", count=10_000)  # a 429 storm
    limited = api.post("/api/connections/amo/check")
    assert limited.status_code == 503
    assert limited.json()["detail"].startswith("the CRM is rate-limiting this account right now")
    assert limited.json()["error_class"] == "RateLimited" and not limited.json()["ok"]
    status = api.get("/api/connections/amo/status").json()["health"]
    assert status["state"] == "degraded" and status["consecutive_failures"] == 1
    amo.clear_faults()

    assert api.post("/api/connections", json={**body, "name": "bad", "token": "wrong"}).status_code == 201
    refused = api.post("/api/connections/bad/check")
    assert refused.status_code == 502 and refused.json()["error_class"] == "AuthError"
    assert "rejected the credentials" in refused.json()["detail"]
