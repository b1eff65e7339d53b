"""Both webhook receivers under malformed input (issue #16 item 2): whatever arrives (random bytes,
nested brackets, wrong content types, lone surrogates as JSON escapes, huge fields, broken form
encodings, odd URL secrets), the answer is a 4xx or an acknowledgement, never a 5xx. A seeded
generator makes every run send the same requests, so a failure reproduces."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from pydantic import SecretStr

from app.connections import service as connections
from app.main import create_app
from connectors.amocrm.descriptor import AmoCRMConnectionCreate
from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate
from tests.support import web
from tests.support.crm import settings_for
from tests.support.db import open_sessions
from tests.support.server import serve_asgi

SEED = 16_002
APP_TOKEN = "b24-app-token"
DOMAIN = "acme.bitrix24.ru"
CASES_PER_GENERATOR = 12
CONTENT_TYPES = (
    "application/x-www-form-urlencoded",
    "application/json",
    "text/json",
    "application/json; charset=latin-1",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data",
    "text/plain",
    "application/octet-stream",
    "",
    "application/x-www-form-urlencoded; charset=\udfff".encode("utf-8", "surrogatepass").decode("latin-1"),
    ";;;",
)
# JSON text with escapes Python decodes to lone surrogates (not valid UTF-8 if encoded).
SURROGATES = ("\\udfff", "\\ud800", "\\udc00x", "\\ud83d", "a\\udfffb")


@dataclass
class Receivers:
    url: str
    amo_secret: str


@pytest.fixture
def receivers(database_url: str, tmp_path: Path) -> Iterator[Receivers]:
    settings = settings_for(tmp_path, database_url)
    webhook_url = f"https://{DOMAIN}/rest/1/abc123/"
    b24 = Bitrix24ConnectionCreate(
        name="b24", crm="bitrix24", webhook_url=webhook_url, app_token=SecretStr(APP_TOKEN)
    )
    amo = AmoCRMConnectionCreate(name="amo", crm="amocrm", subdomain="acme", token=SecretStr("t"))
    records = [connections.build_record(settings, data, None) for data in (b24, amo)]

    async def add() -> None:
        async with open_sessions(database_url) as sessions, sessions.begin() as session:
            session.add_all(records)

    asyncio.run(add())
    with serve_asgi(create_app(settings)) as url:
        yield Receivers(url, str(connections.credentials(settings, records[1])["webhook_secret"]))


def _random_bytes(rng: random.Random) -> tuple[bytes, str]:
    return rng.randbytes(rng.randrange(1, 2048)), rng.choice(CONTENT_TYPES)


def _nested_brackets(rng: random.Random) -> tuple[bytes, str]:
    depth = rng.randrange(1, 400)
    key = "auth" + "".join(rng.choice(("[", "]", "[]", "[application_token]", "[[")) for _ in range(depth))
    pairs = [(key, APP_TOKEN), ("auth[application_token]", APP_TOKEN), ("event", "ONCRMDEALUPDATE")]
    if rng.random() < 0.5:
        nested = "[" * depth + "]" * rng.randrange(depth + 1)
        return f'{{"auth": {nested}, "leads": {nested}}}'.encode(), rng.choice(CONTENT_TYPES)
    return urlencode(rng.sample(pairs, len(pairs))).encode(), rng.choice(CONTENT_TYPES)


def _lone_surrogates(rng: random.Random) -> tuple[bytes, str]:
    bad = rng.choice(SURROGATES)
    bitrix = {
        "event": "ONCRMDEALUPDATE",
        "data": {"FIELDS": {"ID": bad}},
        "auth": {"application_token": bad, "domain": bad, "member_id": bad},
    }
    amo = {"leads": {"status": [{"id": bad, "status_id": bad}]}, "account": {"subdomain": bad, "id": bad}}
    text = json.dumps(rng.choice((bitrix, amo))).replace("\\\\u", "\\u")  # keep the escapes live
    return text.encode(), rng.choice(("application/json", "text/json", ""))


def _surrogate_only_where_it_hurts(rng: random.Random) -> tuple[bytes, str]:
    """A body that is otherwise authentic, with one lone surrogate in one auth field."""
    auth = {"application_token": APP_TOKEN, "domain": DOMAIN, "member_id": "m1"}
    auth[rng.choice(sorted(auth))] = "@SURROGATE@"
    text = json.dumps({"event": "ONCRMDEALUPDATE", "data": {"FIELDS": {"ID": "5"}}, "auth": auth})
    return text.replace("@SURROGATE@", rng.choice(SURROGATES)).encode(), "application/json"


def _huge_fields(rng: random.Random) -> tuple[bytes, str]:
    size = rng.randrange(100_000, 900_000)
    field = rng.choice(("auth[application_token]", "auth[domain]", "data[FIELDS][ID]", "leads[add][0][id]"))
    pairs = {"event": "ONCRMDEALADD", "auth[application_token]": APP_TOKEN, field: "9" * size}
    return urlencode(pairs).encode(), "application/x-www-form-urlencoded"


def _bad_form_encodings(rng: random.Random) -> tuple[bytes, str]:
    pieces = (
        "%zz",
        "%",
        "%f",
        "%ff%fe%fd",
        "%ED%BF%BF",
        "%C0%AF",
        "&&&",
        "===",
        "auth[application_token]=%ED%A0%80",
        "auth%5Bapplication_token%5D=%FF",
        "leads[status][0][id]=%80",
        "account[subdomain]=%ED%BF%BF",
        "\xff\xfe".encode("latin-1").decode("latin-1"),
    )
    body = "&".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
    return body.encode("latin-1"), rng.choice(("application/x-www-form-urlencoded", ""))


GENERATORS: tuple[Callable[[random.Random], tuple[bytes, str]], ...] = (
    _random_bytes,
    _nested_brackets,
    _lone_surrogates,
    _surrogate_only_where_it_hurts,
    _huge_fields,
    _bad_form_encodings,
)
SECRETS = ("%ED%BF%BF", "%FF", "%00", "x" * 4000, "..%2F..", "%25", quote("\u00e9"), "a%20b")


def _requests(receivers: Receivers, seed: int) -> Iterator[tuple[str, bytes, str]]:
    rng = random.Random(seed)
    paths = ["/webhooks/bitrix24/b24", f"/webhooks/amocrm/amo/{receivers.amo_secret}"]
    for generate in GENERATORS:
        for _ in range(CASES_PER_GENERATOR):
            body, content_type = generate(rng)
            for path in paths:
                yield path, body, content_type
    for secret in SECRETS:  # odd secrets in the URL, the amoCRM receiver's credential
        yield f"/webhooks/amocrm/amo/{secret}", b"leads[add][0][id]=1", "application/x-www-form-urlencoded"


def test_no_malformed_delivery_gets_a_server_error(receivers: Receivers) -> None:
    answered: list[tuple[str, int]] = []
    failures: list[str] = []
    with web.client(base_url=receivers.url, timeout=60) as client:
        for path, body, content_type in _requests(receivers, SEED):
            # Sent as bytes: a header value may hold non-ASCII bytes (latin-1 on the wire).
            headers = {"content-type": content_type.encode("latin-1")} if content_type else {}
            response = client.post(path, content=body, headers=headers)
            answered.append((path.split("/")[2], response.status_code))
            if response.status_code >= 500:
                failures.append(f"{response.status_code} {path[:60]} {content_type!r} {body[:80]!r}")
    assert failures == []
    # The fuzz reached both receivers and got past authentication on each sometimes (a vacuous run,
    # all 404s say, would prove nothing). Odd URL secrets may also miss the route (404).
    by_crm = {crm: {code for c, code in answered if c == crm} for crm in ("bitrix24", "amocrm")}
    assert {200, 401} <= by_crm["bitrix24"] and {200, 401} <= by_crm["amocrm"]
    assert 404 not in by_crm["bitrix24"]


def test_a_lone_surrogate_token_is_refused_not_a_crash(receivers: Receivers) -> None:
    """The case issue #16 reported: auth.application_token = "\\udfff" in a JSON body."""
    body = b'{"event": "ONCRMDEALUPDATE", "auth": {"application_token": "\\udfff", "domain": "acme.bitrix24.ru"}}'
    response = web.post(
        receivers.url + "/webhooks/bitrix24/b24", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "webhook refused: wrong or missing auth[application_token]"}


def test_an_authentic_body_naming_its_portal_with_a_lone_surrogate_is_refused(receivers: Receivers) -> None:
    """The token is right, but no portal is named "\\udfff": recording it as the connection's new
    address (and logging it) would break later, so the delivery is refused instead."""
    body = json.dumps({"event": "ONCRMDEALUPDATE", "auth": {"application_token": APP_TOKEN, "domain": "@"}})
    response = web.post(
        receivers.url + "/webhooks/bitrix24/b24",
        content=body.replace("@", "\\udfff").encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "webhook refused: the body's domain is not valid text"}
