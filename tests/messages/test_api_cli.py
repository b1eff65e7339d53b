"""The API, the CLI and the public opt-out page: validation errors change nothing, secrets never
come back, and the opt-out link works only through its button."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.dashboard.i18n import translator
from app.dashboard.render import ENV
from app.deals.models import Deal
from app.funnels.models import Funnel
from app.main import create_app
from app.messages.enqueue import enqueue_webhook
from app.messages.models import ChannelAccount, OptOut
from app.messages.service import deal_messages
from app.messages.statuses import MessageStatus, OptOutSource
from tests.messages.conftest import NOON, Outbox
from tests.support import web
from tests.support.channels import TelegramSandbox
from tests.support.cli import run_cli
from tests.support.server import serve_asgi

AUTH = {"Authorization": "Bearer test-token-1234567890"}
WEBHOOK_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
SECRET_KEY = "7sGqz8pM5Y2Jw8m3b7yS0gR5tW1vN9cX4eK6hL2dQ0A="  # tests.support.crm.settings_for's
TEMPLATE_KEY = "auto_service.regular_clients"  # declares the automation "visit_reminder"


@pytest.fixture
async def api(outbox: Outbox) -> AsyncIterator[httpx.AsyncClient]:
    with serve_asgi(create_app(outbox.settings)) as url:
        async with web.async_client(base_url=url, headers=AUTH, timeout=60) as client:
            yield client


async def test_api_validation_changes_nothing_and_secrets_stay_secret(
    outbox: Outbox, api: httpx.AsyncClient
) -> None:
    bad = [
        (
            "webhook",
            {"config": {"url": "https://hooks.example.com/x"}, "secrets": {"signing_secret": "not-whsec"}},
        ),
        ("webhook", {"config": {"url": "ftp://x"}, "secrets": {"signing_secret": WEBHOOK_SECRET}}),
        ("email", {"config": {"port": 25, "sender": "a@b.ru"}, "secrets": {"password": "hunter2-secret"}}),
        ("email", {"config": {"host": "h", "port": 25, "sender": "nodomain"}, "secrets": {}}),
        ("fax", {"config": {}, "secrets": {}}),
        ("telegram", {"config": {}, "secrets": {}}),
    ]
    for channel, body in bad:
        response = await api.put(f"/api/connections/b24/channels/{channel}", json=body)
        assert response.status_code == 422, (channel, response.text)
        assert "hunter2-secret" not in response.text and "not-whsec" not in response.text
    assert (await api.get("/api/connections/b24/channels")).json() == []
    assert (await api.put("/api/connections/nope/channels/sms", json={})).status_code == 404

    body = {"config": {"url": "https://127.0.0.1:9/hook"}, "secrets": {"signing_secret": WEBHOOK_SECRET}}
    created = await api.put("/api/connections/b24/channels/webhook", json=body)
    assert created.status_code == 200, created.text
    assert created.json()["secrets"] == {"signing_secret": "set"}
    for path in ("/api/connections/b24/channels", "/api/connections/b24/channels/webhook"):
        assert WEBHOOK_SECRET not in (await api.get(path)).text
    async with outbox.sessions() as session:
        stored = await session.scalar(select(ChannelAccount))
    assert stored is not None and WEBHOOK_SECRET not in stored.secrets_encrypted

    assert (
        await api.put("/api/connections/b24/messaging", json={"timezone": "Mars/Olympus"})
    ).status_code == 422
    assert (await api.put("/api/connections/b24/messaging", json={"quiet_hours": "9pm"})).status_code == 422
    assert (await api.put("/api/connections/b24/messaging", json={"colour": "red"})).status_code == 422
    assert (await api.get("/api/connections/b24/messaging")).json()["timezone"] == "Europe/Moscow"
    changed = await api.put(
        "/api/connections/b24/messaging", json={"timezone": "Asia/Yekaterinburg", "daily_limit": 1}
    )
    assert changed.status_code == 200 and changed.json()["daily_limit"] == 1
    assert (await api.get("/api/connections/b24/messaging")).json()["timezone"] == "Asia/Yekaterinburg"

    assert (await api.get("/api/messages", params={"status": "lost"})).status_code == 422
    assert (await api.get("/api/messages", params={"channel": "fax"})).status_code == 422
    assert (
        await api.post("/api/connections/b24/opt-outs", json={"channel": "fax", "address": "x"})
    ).status_code == 422
    async with web.async_client(base_url=api.base_url) as anonymous:
        assert (await anonymous.get("/api/messages")).status_code == 401


async def test_the_opt_out_link_asks_first_then_stops_messages(
    outbox: Outbox, api: httpx.AsyncClient, telegram: TelegramSandbox
) -> None:
    telegram.reset()
    await outbox.set_account("telegram", {"api_base_url": telegram.url}, {"bot_token": telegram.token})
    await outbox.notify(["telegram"])
    await outbox.deliver()
    [sent] = telegram.messages()
    link = re.search(r"http://127\.0\.0\.1:9(/opt-out/\S+)", sent["text"])
    assert link is not None
    path = link.group(1)

    page = await api.get(path)
    assert page.status_code == 200 and '<form method="post"' in page.text and "700100" in page.text
    async with outbox.sessions() as session:
        assert list(await session.scalars(select(OptOut))) == []  # opening the link changes nothing
    for _ in range(2):  # a repeat is harmless
        done = await api.post(path)
        assert done.status_code == 200 and 'data-opted-out="1"' in done.text
    async with outbox.sessions() as session:
        [row] = list(await session.scalars(select(OptOut)))
    assert (row.channel, row.address, row.source) == ("telegram", "700100", OptOutSource.LINK)
    assert (await api.get(path[:-3] + "xyz")).status_code == 404

    skipped = await outbox.notify(["telegram"])
    await outbox.deliver()
    assert (await outbox.message(skipped)).status == MessageStatus.SKIPPED
    assert len(telegram.messages()) == 1
    listed = (await api.get("/api/messages", params={"connection": "b24", "status": "skipped"})).json()
    assert listed["total"] == 1 and listed["items"][0]["deal_id"] == outbox.deal_id


def _env(outbox: Outbox, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "FUNNELSYNC_DATA_DIR": str(tmp_path / "cli"),
        "FUNNELSYNC_DATABASE_URL": str(outbox.settings.database_url),
        "FUNNELSYNC_SECRET_KEY": SECRET_KEY,
        "FUNNELSYNC_ALLOW_PRIVATE_CRM": "true",
        **extra,
    }


async def test_cli_reads_secrets_from_the_environment_and_refuses_bad_input(
    outbox: Outbox, tmp_path: Path
) -> None:
    env = _env(outbox, tmp_path, HOOK_SECRET=WEBHOOK_SECRET)
    missing = run_cli("channels", "set", "b24", "webhook", "--config", "url=https://127.0.0.1:9/h",
                      "--secret", "signing_secret=NOT_SET_ANYWHERE", env=env)  # fmt: skip
    assert missing.returncode == 2 and "NOT_SET_ANYWHERE" in missing.stderr
    bad = run_cli("channels", "set", "b24", "email", "--config", "host=h", "--config", "port=many",
                  "--config", "sender=a@b.ru", env=env)  # fmt: skip
    assert bad.returncode == 2 and "port" in bad.stderr
    assert run_cli("channels", "set", "b24", "webhook", "--config", "url", env=env).returncode == 2
    assert run_cli("channels", "set", "nope", "sms", env=env).returncode == 2
    assert '"accounts": []' in run_cli("channels", "list", "b24", "--json", env=env).stdout

    ok = run_cli("channels", "set", "b24", "webhook", "--config", "url=https://127.0.0.1:9/h",
                 "--secret", "signing_secret=HOOK_SECRET", env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    listed = run_cli("channels", "list", "b24", env=env)
    assert "signing_secret=set" in listed.stdout
    assert WEBHOOK_SECRET not in ok.stdout + ok.stderr + listed.stdout + listed.stderr

    assert run_cli("channels", "policy", "b24", "--quiet-hours", "late", env=env).returncode == 2
    assert run_cli("channels", "policy", "b24", "--language", "de", env=env).returncode == 2
    policy = run_cli(
        "channels", "policy", "b24", "--quiet-hours", "22:00-08:00", "--daily-limit", "5", env=env
    )
    assert (
        policy.returncode == 0
        and "quiet_hours=22:00-08:00" in policy.stdout
        and "daily_limit=5" in policy.stdout
    )
    assert run_cli("messages", "list", "b24", "--status", "lost", env=env).returncode == 2
    await outbox.webhook()
    listed_messages = run_cli("messages", "list", "b24", "--status", "queued", "--json", env=env)
    assert listed_messages.returncode == 0 and '"total": 1' in listed_messages.stdout
    assert run_cli("channels", "remove", "b24", "sms", env=env).returncode == 2
    assert run_cli("channels", "remove", "b24", "webhook", env=env).returncode == 0


async def test_the_messages_page_counts_by_channel_and_status_and_filters(
    outbox: Outbox, api: httpx.AsyncClient, telegram: TelegramSandbox
) -> None:
    telegram.reset()
    await outbox.set_account("telegram", {"api_base_url": telegram.url}, {"bot_token": telegram.token})
    await outbox.notify(["telegram"])
    await outbox.notify(["telegram"])
    await outbox.deliver()
    await outbox.record_opt_out("telegram", "700100")
    await outbox.notify(["telegram"])
    await outbox.deliver()
    assert (await api.post("/login", data={"token": "test-token-1234567890", "next": "/"})).status_code == 303

    page = await api.get("/messages", params={"lang": "en"})

    assert page.status_code == 200, page.text
    row = re.search(r'<tr data-channel="telegram">(.*?)</tr>', page.text, re.S)
    assert row is not None
    assert re.search(r'data-status="sent">.*?>2</a>', row.group(1)) is not None
    assert "msg_" not in page.text  # every label has its translation
    skipped = await api.get("/messages", params={"status": "skipped", "lang": "en"})
    assert skipped.text.count('data-status="skipped">skipped</span>') == 1
    assert f'href="/deals/{outbox.deal_id}"' in skipped.text
    assert (await api.get("/messages", params={"status": "lost"})).status_code == 400
    assert (await api.get("/messages", params={"connection": "nope"})).status_code == 404
    assert (await api.get("/messages", params={"deal_id": "x"})).status_code == 400


async def test_the_messages_page_names_the_automation_from_the_deals_template(
    outbox: Outbox, api: httpx.AsyncClient
) -> None:
    async with outbox.sessions.begin() as session:
        funnel = Funnel(
            connection_id=outbox.connection.id, template_key=TEMPLATE_KEY, name="f", crm_pipeline_id="5"
        )
        session.add(funnel)
        await session.flush()
        deal = await session.get(Deal, outbox.deal_id)
        assert deal is not None
        deal.funnel_id = funnel.id
        await enqueue_webhook(
            session, connection_id=outbox.connection.id, deal_id=outbox.deal_id, automation="visit_reminder",
            key="auto:named", event="visit.reminder", data={}, now=NOON,
        )  # fmt: skip
    await outbox.webhook()  # automation "test": no template declares it
    assert (await api.post("/login", data={"token": "test-token-1234567890", "next": "/"})).status_code == 303

    russian = (await api.get("/messages", params={"lang": "ru"})).text
    english = (await api.get("/messages", params={"lang": "en"})).text

    assert '<span data-automation="visit_reminder">Напоминание о визите за день</span>' in russian
    assert '<span data-automation="visit_reminder">Visit reminder the day before</span>' in english
    assert "<td>test</td>" in english  # an undeclared automation shows its code


async def test_the_deal_partial_lists_the_deals_messages(outbox: Outbox) -> None:
    await outbox.webhook()
    async with outbox.sessions() as session:
        messages = await deal_messages(session, outbox.deal_id)
    html = ENV.get_template("_deal_messages.html").render(deal_messages=messages, t=translator("ru"))
    assert 'data-status="queued">в очереди</span>' in html and "Вебхук" in html


async def test_the_deal_page_shows_the_deals_messages_with_their_status(
    outbox: Outbox, api: httpx.AsyncClient, telegram: TelegramSandbox
) -> None:
    telegram.reset()
    await outbox.set_account("telegram", {"api_base_url": telegram.url}, {"bot_token": telegram.token})
    await outbox.notify(["telegram"])
    await outbox.deliver()
    assert (await api.post("/login", data={"token": "test-token-1234567890", "next": "/"})).status_code == 303

    page = await api.get(f"/deals/{outbox.deal_id}", params={"lang": "en"})

    assert page.status_code == 200, page.text
    section = page.text[page.text.index('id="deal-messages"') :]
    assert 'data-status="sent">sent</span>' in section and "700100" in section
