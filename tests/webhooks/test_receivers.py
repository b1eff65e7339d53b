"""Webhook receivers: authenticate, store before answering, refuse forgeries, keep what cannot be
parsed, recognise duplicates. Real HTTP, both databases."""

from __future__ import annotations

import pytest

from tests.support import web
from tests.webhooks.receiver_support import (
    AUTH,
    FORM,
    Service,
    amo_body,
    bitrix_body,
)


def test_bitrix24_event_is_stored_once(service: Service) -> None:
    first = web.post(f"{service.url}/webhooks/bitrix24/b24", content=bitrix_body(), headers=FORM)
    assert first.status_code == 200 and first.json() == {"status": "accepted"}
    again = web.post(f"{service.url}/webhooks/bitrix24/b24", content=bitrix_body(), headers=FORM)
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    assert service.inbox() == [("pending", None)]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (bitrix_body(token="forged"), "application_token"),
        # A valid token from another domain is a renamed portal, accepted and recorded
        # (tests/connections/test_domain_moves.py); a forged token from it is refused here.
        (bitrix_body(token="forged", domain="evil.bitrix24.ru"), "application_token"),
        ("not a form at all \x00", "not a Bitrix24 event"),
    ],
)
def test_forged_bitrix24_requests_are_refused_and_not_stored(
    service: Service, body: str, reason: str
) -> None:
    response = web.post(f"{service.url}/webhooks/bitrix24/b24", content=body, headers=FORM)
    assert response.status_code == 401 and reason in response.json()["detail"]
    assert service.inbox() == []


def test_amocrm_secret_and_account_are_checked(service: Service) -> None:
    wrong = web.post(f"{service.url}/webhooks/amocrm/amo/not-the-secret", content=amo_body(), headers=FORM)
    assert wrong.status_code == 401 and "secret" in wrong.json()["detail"]
    # Another subdomain with the right secret is a renamed account: accepted and recorded
    # (tests/connections/test_domain_moves.py); with a wrong secret it is refused like any other.
    renamed = web.post(
        f"{service.url}/webhooks/amocrm/amo/not-the-secret", content=amo_body(subdomain="evil"), headers=FORM
    )
    assert renamed.status_code == 401 and "secret" in renamed.json()["detail"]
    assert service.inbox() == []
    ok = web.post(f"{service.url}/webhooks/amocrm/amo/{service.amo_secret}", content=amo_body(), headers=FORM)
    assert ok.status_code == 200 and ok.json()["status"] == "accepted"
    assert service.inbox() == [("pending", None)]


def test_unparseable_authenticated_body_is_stored_failed_and_acknowledged(service: Service) -> None:
    garbage = "leads[status][0][id]=abc&leads[status][0][status_id]=&account[subdomain]=acme"
    response = web.post(
        f"{service.url}/webhooks/amocrm/amo/{service.amo_secret}", content=garbage, headers=FORM
    )
    assert response.status_code == 200
    [(status, error)] = service.inbox()
    assert status == "failed" and error and "cannot parse webhook body" in error
    failed = web.get(f"{service.url}/api/events", params={"status": "failed"}, headers=AUTH).json()
    assert failed[0]["error"] == error and "leads[status]" in failed[0]["body_preview"]


def test_oversized_body_is_413_and_not_stored(service: Service) -> None:
    big = bitrix_body() + "&pad=" + "x" * (1024 * 1024)
    response = web.post(f"{service.url}/webhooks/bitrix24/b24", content=big, headers=FORM)
    assert response.status_code == 413
    assert service.inbox() == []


def answer(url: str, body: str) -> tuple[int, object]:
    response = web.post(url, content=body, headers=FORM)
    return response.status_code, response.json()


@pytest.mark.parametrize("body", [bitrix_body(token="wrong-token"), "not a bitrix24 event", ""])
def test_an_unknown_bitrix24_connection_is_answered_like_a_wrong_token(service: Service, body: str) -> None:
    # The answers must not tell which connection names exist: an unknown name, a connection of
    # another CRM and a wrong token all read the same.
    wrong_token = answer(f"{service.url}/webhooks/bitrix24/b24", body)
    assert wrong_token[0] == 401
    assert answer(f"{service.url}/webhooks/bitrix24/nope", body) == wrong_token
    assert answer(f"{service.url}/webhooks/bitrix24/amo", body) == wrong_token
    assert answer(f"{service.url}/webhooks/bitrix24/nope", bitrix_body()) == answer(
        f"{service.url}/webhooks/bitrix24/b24", bitrix_body(token="wrong-token")
    )
    assert service.inbox() == []


def test_an_unknown_amocrm_connection_is_answered_like_a_wrong_secret(service: Service) -> None:
    wrong_secret = answer(f"{service.url}/webhooks/amocrm/amo/wrong-secret", amo_body())
    assert wrong_secret == (401, {"detail": "webhook refused: wrong secret in the URL"})
    assert answer(f"{service.url}/webhooks/amocrm/nope/wrong-secret", amo_body()) == wrong_secret
    # Even with the right secret of another connection: the name is what is unknown.
    assert answer(f"{service.url}/webhooks/amocrm/nope/{service.amo_secret}", amo_body()) == wrong_secret
    assert answer(f"{service.url}/webhooks/amocrm/b24/{service.amo_secret}", amo_body()) == wrong_secret
    assert service.inbox() == []
