"""A renamed portal/account and a moved Bitrix24 OAuth server, against the sandboxes over real HTTP.

The sandboxes listen on one port under two names: 127.0.0.1 is the old address, localhost the new
one. A rename makes the old address answer REST calls with a redirect (Bitrix24 302 as PYSDK
handles it; amoCRM 301, unverified); the connectors follow it when only the host changes, call the
new host from then on and tell the app once. Any other redirect is refused with a clear error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from connectors.amocrm.client import AmoCRMConnector
from connectors.base import AccountBlocked, TokenSet
from connectors.bitrix24.client import Bitrix24Connector
from connectors.bitrix24.transport import oauth_server_of
from connectors.http import AMOCRM_DEFAULT, BITRIX24_STANDARD, RedirectRefused
from tests.connectors.amocrm import conftest as amo
from tests.connectors.bitrix24 import conftest as b24


class Moves:
    """What the connector told the app: (old origin, new origin) per move."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, old: str, new: str) -> None:
        self.seen.append((old, new))


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


@pytest.fixture
def bitrix() -> Iterator[b24.Sandbox]:
    with b24.running_sandbox() as box:
        yield box


@pytest.fixture
def amocrm() -> Iterator[amo.Sandbox]:
    with amo.running_sandbox() as box:
        yield box


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    connectors: list[Any] = []
    yield connectors
    for connector in connectors:
        await connector.aclose()


def _b24_webhook(box: b24.Sandbox, moves: Moves, closing: list[Any], **options: Any) -> Bitrix24Connector:
    connector = box.webhook(domain_saver=moves, **options)
    closing.append(connector)
    return connector


async def test_bitrix24_follows_a_renamed_portal_and_reports_it_once(
    bitrix: b24.Sandbox, closing: list[Any]
) -> None:
    moves = Moves()
    connector = _b24_webhook(bitrix, moves, closing)
    new = f"localhost:{_port(bitrix.url)}"
    bitrix.control("POST", "/_sandbox/rename", {"new_host": new})

    pipelines = await connector.list_pipelines()  # several requests: the first one meets the 302
    await connector.check()

    assert pipelines and pipelines[0].stages
    assert moves.seen == [(bitrix.url, f"http://{new}")]
    assert bitrix.control("GET", "/_sandbox/rename")["redirects"] == 1  # later calls go to the new host
    assert connector.transport.webhook_url.startswith(f"http://{new}/rest/")
    assert connector.transport.portal == new


@pytest.mark.parametrize(
    ("change", "what"), [({"path": "/auth/"}, "different path"), ({"scheme": "https"}, "different scheme")]
)
async def test_bitrix24_refuses_a_redirect_that_is_not_a_rename(
    bitrix: b24.Sandbox, closing: list[Any], change: dict[str, str], what: str
) -> None:
    moves = Moves()
    connector = _b24_webhook(bitrix, moves, closing, retry=b24.NO_RETRY)
    bitrix.control("POST", "/_sandbox/rename", {"new_host": f"localhost:{_port(bitrix.url)}", **change})

    with pytest.raises(RedirectRefused) as caught:
        await connector.check()

    # Account-level (the connection pauses, queued writes wait), a plain message, no secret in it.
    assert isinstance(caught.value, AccountBlocked) and caught.value.status == 302
    assert what in caught.value.crm_text and "not followed" in caught.value.crm_text
    assert bitrix.config.webhook_code not in caught.value.crm_text
    assert moves.seen == []


async def test_bitrix24_oauth_token_answer_naming_a_new_portal_address_is_reported(
    bitrix: b24.Sandbox, closing: list[Any]
) -> None:
    """The token answer's client_endpoint names the portal's REST base: after a rename, the new one."""
    saved: list[TokenSet] = []

    async def saver(tokens: TokenSet) -> None:
        saved.append(tokens)

    moves = Moves()
    connector = Bitrix24Connector(
        oauth=bitrix.oauth_app(saver),
        rate=BITRIX24_STANDARD.scaled(bitrix.config.speed),
        retry=b24.FAST_RETRY,
        account_key="b24test:renamed-oauth",
        domain_saver=moves,
    )
    closing.append(connector)
    new = f"localhost:{_port(bitrix.url)}"
    # The portal's new name is known to the OAuth server; this client's old address keeps working.
    bitrix.control("POST", "/_sandbox/rename", {"new_host": new, "old_host": "old-name.invalid"})
    bitrix.control("POST", "/_sandbox/oauth/expire")

    await connector.check()  # expired_token -> refresh -> the answer names the new client_endpoint

    assert [t.extra["client_endpoint"] for t in saved] == [f"http://{new}/rest/"]
    assert moves.seen == [(bitrix.url, f"http://{new}")]
    await connector.check()
    assert bitrix.control("GET", "/_sandbox/oauth")["token_uses"][saved[0].access_token] == 2


async def test_bitrix24_refreshes_at_the_oauth_server_the_token_answer_names(
    bitrix: b24.Sandbox, closing: list[Any]
) -> None:
    saved: list[TokenSet] = []

    async def saver(tokens: TokenSet) -> None:
        saved.append(tokens)

    connector = bitrix.oauth(saver)
    closing.append(connector)
    port = _port(bitrix.url)
    moved = f"http://localhost:{port}/b24oauth"
    bitrix.control("POST", "/_sandbox/oauth/server", {"server_endpoint": f"{moved}/rest/"})

    bitrix.control("POST", "/_sandbox/oauth/expire")
    await connector.check()  # first refresh: at the configured server; its answer names another
    bitrix.control("POST", "/_sandbox/oauth/expire")
    await connector.check()  # second refresh: at the named one

    assert bitrix.control("GET", "/_sandbox/rename")["token_requests"] == [
        f"127.0.0.1:{port}/oauth/token/",
        f"localhost:{port}/b24oauth/oauth/token/",
    ]
    assert [t.extra["oauth_server"] for t in saved] == [moved, moved]  # persisted with the tokens
    assert bitrix.control("GET", "/_sandbox/oauth")["refreshes"] == 2


def test_oauth_server_of_a_server_endpoint() -> None:
    current = "https://oauth.bitrix.info"
    assert oauth_server_of("https://oauth.bitrix24.tech/rest/", current) == "https://oauth.bitrix24.tech"
    assert oauth_server_of("https://auth.example/b24/rest", current) == "https://auth.example/b24"
    # Missing or unusable: keep the current server; never send the client secret over plain http.
    for value in (None, "", "oauth.bitrix24.tech/rest/", "ftp://x/rest/", "http://oauth.bitrix24.tech/rest/"):
        assert oauth_server_of(value, current) == current
    assert oauth_server_of("http://localhost:1/rest/", "http://127.0.0.1:1") == "http://localhost:1"


def _amo_connector(box: amo.Sandbox, moves: Moves, closing: list[Any], **options: Any) -> AmoCRMConnector:
    options.setdefault("retry", amo.FAST_RETRY)
    connector = AmoCRMConnector(
        box.config.subdomain,
        token=box.config.token,
        base_url=box.url,
        rate=AMOCRM_DEFAULT.scaled(box.config.speed),
        domain_saver=moves,
        **options,
    )
    closing.append(connector)
    return connector


async def test_amocrm_follows_a_renamed_account_with_the_query_intact(
    amocrm: amo.Sandbox, closing: list[Any]
) -> None:
    pipeline = amocrm.main_pipeline()
    first = amocrm.create_lead(name="Before the rename", pipeline_id=pipeline["id"])
    amocrm.create_lead(name="Another", pipeline_id=pipeline["id"])
    moves = Moves()
    connector = _amo_connector(amocrm, moves, closing)
    new = f"localhost:{_port(amocrm.url)}"
    amocrm.control("POST", "/_sandbox/rename", {"subdomain": "renamed", "new_host": new})

    [deal] = await connector.get_deals([str(first["id"])])  # a GET whose filter is in the query
    pipelines = await connector.list_pipelines()

    assert deal.id == str(first["id"]) and deal.title == "Before the rename"  # only the one asked for
    assert pipelines
    assert moves.seen == [(amocrm.url, f"http://{new}")]
    assert amocrm.control("GET", "/_sandbox/rename")["redirects"] == 1
    # Each API request the sandbox served was answered at the new host with the query sent once.
    queries = [e["query"] for e in amocrm.requests() if e["path"] == "/api/v4/leads"]
    assert queries and all(q.count(str(first["id"])) == 1 for q in queries)


async def test_amocrm_refuses_a_redirect_to_another_path(amocrm: amo.Sandbox, closing: list[Any]) -> None:
    moves = Moves()
    connector = _amo_connector(amocrm, moves, closing, retry=amo.NO_RETRY)
    amocrm.control(
        "POST",
        "/_sandbox/rename",
        {"subdomain": "renamed", "new_host": f"localhost:{_port(amocrm.url)}", "path": "/login"},
    )
    with pytest.raises(RedirectRefused, match="different path"):
        await connector.list_pipelines()
    assert moves.seen == []
