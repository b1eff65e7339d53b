"""OAuth 2.0: code exchange, single-use rotating refresh tokens, one refresh at a time, persisted
before use."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from connectors.amocrm import exchange_authorization_code
from connectors.base import AuthError, CRMError, TokenSet
from tests.connectors.amocrm.conftest import ConnectorFactory, Sandbox, SavedTokens, fingerprint_of, oauth_app


async def _first_tokens(sandbox: Sandbox) -> TokenSet:
    code = sandbox.control("POST", "/_sandbox/oauth/code")
    return await exchange_authorization_code(
        sandbox.config.subdomain, oauth_app(sandbox), code["code"], base_url=sandbox.url
    )


async def test_authorization_code_exchange(sandbox: Sandbox) -> None:
    code = sandbox.control("POST", "/_sandbox/oauth/code")["code"]
    tokens = await exchange_authorization_code(
        sandbox.config.subdomain, oauth_app(sandbox), code, base_url=sandbox.url
    )
    assert tokens.refresh_token.startswith("def502") and tokens.access_token.count(".") == 2  # a JWT
    assert tokens.expires_at > datetime.now(UTC) + timedelta(hours=2)  # 24 h at speed 10
    with pytest.raises(AuthError) as error:  # a code works once
        await exchange_authorization_code(
            sandbox.config.subdomain, oauth_app(sandbox), code, base_url=sandbox.url
        )
    assert "Authorization code has been revoked" in error.value.crm_text


async def test_twenty_concurrent_calls_after_a_401_refresh_once(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    saver = SavedTokens(sandbox)
    connector = make_connector(
        sandbox, oauth=oauth_app(sandbox), tokens=await _first_tokens(sandbox), token_saver=saver
    )
    sandbox.fault("expired_token")  # the server says the token is dead; the client still thinks not
    sandbox.reset_stats()
    results = await asyncio.gather(*(connector.check() for _ in range(20)))
    assert {r.account_id for r in results} == {str(sandbox.config.account_id)}
    assert sandbox.stats()["requests"]["POST /oauth2/access_token"] == 1
    assert len(saver.saved) == 1 and saver.seen_before_save == [0]


async def test_twenty_concurrent_calls_with_an_expired_token_refresh_once_before_sending(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    saver = SavedTokens(sandbox)
    tokens = replace(await _first_tokens(sandbox), expires_at=datetime.now(UTC) - timedelta(minutes=1))
    connector = make_connector(sandbox, oauth=oauth_app(sandbox), tokens=tokens, token_saver=saver)
    sandbox.reset_stats()
    await asyncio.gather(*(connector.list_pipelines() for _ in range(20)))
    stats = sandbox.stats()
    assert stats["requests"]["POST /oauth2/access_token"] == 1
    assert stats["statuses"] == {"200": 21}  # no request went out with the expired token


async def test_rotated_tokens_are_persisted_before_first_use(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    saver = SavedTokens(sandbox)
    first = await _first_tokens(sandbox)
    connector = make_connector(sandbox, oauth=oauth_app(sandbox), tokens=first, token_saver=saver)
    assert await connector.refresh_if_expiring(timedelta(minutes=1)) is False  # far from expiry
    assert await connector.refresh_if_expiring(timedelta(hours=25)) is True
    await connector.check()
    [new] = saver.saved
    assert new.refresh_token != first.refresh_token
    assert saver.seen_before_save == [0]
    uses = [e for e in sandbox.requests() if e["token"] == fingerprint_of(new.access_token)]
    assert uses and min(e["seq"] for e in uses) > saver.log_length_at_save[0]


async def test_a_used_refresh_token_is_refused_with_the_real_error(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    first = await _first_tokens(sandbox)
    connector = make_connector(
        sandbox, oauth=oauth_app(sandbox), tokens=first, token_saver=SavedTokens(sandbox)
    )
    await connector.refresh_if_expiring(timedelta(days=2))
    app = oauth_app(sandbox)
    answer = await asyncio.to_thread(
        httpx.post,
        f"{sandbox.url}/oauth2/access_token",
        json={
            "client_id": app.client_id,
            "client_secret": app.client_secret,
            "grant_type": "refresh_token",
            "refresh_token": first.refresh_token,
            "redirect_uri": app.redirect_uri,
        },
    )
    assert answer.status_code == 401 and answer.headers["content-type"] == "application/problem+json"
    assert answer.json() == {
        "hint": "Token has been revoked",
        "title": "Некорректный запрос",
        "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
        "status": 401,
        "detail": "В запросе отсутствует ряд параметров или параметры невалидны",
    }
    stale = make_connector(
        sandbox,
        oauth=app,
        tokens=replace(first, expires_at=datetime.now(UTC) - timedelta(seconds=1)),
        token_saver=SavedTokens(sandbox),
    )
    with pytest.raises(AuthError) as error:
        await stale.check()
    assert "Token has been revoked" in error.value.crm_text


async def test_a_failed_save_keeps_the_new_pair_and_saves_before_use(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    saved: list[TokenSet] = []
    fail = [True]

    async def flaky_saver(tokens: TokenSet) -> None:
        if fail.pop() if fail else False:
            raise OSError("database is down")
        saved.append(tokens)

    tokens = replace(await _first_tokens(sandbox), expires_at=datetime.now(UTC))
    connector = make_connector(sandbox, oauth=oauth_app(sandbox), tokens=tokens, token_saver=flaky_saver)
    sandbox.reset_stats()
    with pytest.raises(CRMError) as error:
        await connector.check()
    assert "saving them failed" in error.value.message
    assert sandbox.stats()["requests"] == {"POST /oauth2/access_token": 1}  # not used unsaved
    await connector.check()
    assert len(saved) == 1 and sandbox.stats()["requests"]["POST /oauth2/access_token"] == 1
    assert sandbox.requests()[-1]["token"] == fingerprint_of(saved[0].access_token)
