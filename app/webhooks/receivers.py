"""POST /webhooks/bitrix24/{connection} and /webhooks/amocrm/{connection}/{secret}.

An accepted delivery is committed to the inbox before the 2xx goes out, so an acknowledged event is
never lost; a forged one is refused with 401 and nothing stored. A body we can authenticate but not
parse is still stored (as failed) and acknowledged: the CRMs disable hooks that answer with errors.
Processing happens later, in the inbox job, which this wakes.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from app import metrics
from app.api.deps import SessionsDep, SettingsDep
from app.connections import service as connections
from app.connections.connector import record_domain
from app.connections.models import Connection
from app.security import tokens_match
from app.waker import INBOX_JOB, get_waker
from app.webhooks.service import dedupe_key, store_event
from connectors.events import WebhookIdentity, WebhookParseError, parse_deal_events, read_identity

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
log = logging.getLogger("funnelsync.webhooks")
# A portal (Bitrix24) or account (amoCRM) can be renamed; its application token or our URL secret
# already proved the sender, so a new address is recorded, not refused. Ids never change.
_ADDRESSES = ("domain", "subdomain")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"body over {limit} bytes")
    return bytes(body)


async def _connection(sessions: Any, name: str, crm: str) -> Connection:
    async with sessions() as session:
        try:
            record: Connection = await connections.get_connection(session, name)
        except connections.ConnectionNotFound:
            record = None  # type: ignore[assignment]
    if record is None or record.crm != crm:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {crm} connection named {name!r}")
    return record


def _refuse(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, f"webhook refused: {reason}")


async def _accept(request: Request, sessions: Any, record: Connection, body: bytes) -> dict[str, str]:
    content_type = request.headers.get("content-type", "")
    error = None
    keys: list[str] = []
    try:
        keys = [e.dedupe_key for e in parse_deal_events(record.crm, body, content_type)]
    except WebhookParseError as exc:
        error = f"cannot parse webhook body: {exc}"
    async with sessions.begin() as session:
        new = await store_event(session, record.id, dedupe_key(keys, body), body, content_type, error=error)
    if new and error is None:
        get_waker(request).wake(INBOX_JOB)
    outcome = "duplicate" if not new else "unparseable" if error else "accepted"
    metrics.EVENTS_RECEIVED.labels(crm=record.crm, outcome=outcome).inc()
    return {"status": "accepted" if new else "duplicate"}


def _check_identity(
    record: Connection, identity: WebhookIdentity, claims: dict[str, str | None]
) -> str | None:
    """Compare what the body claims (portal, account) with what we know about the connection.
    Returns the new domain/subdomain the body names when the account was renamed."""
    moved = None
    for key, value in claims.items():
        expected = record.settings.get(key)
        if expected and value and str(expected).lower() != str(value).lower():
            if key not in _ADDRESSES:
                raise _refuse(f"{key} {value!r} does not match this connection")
            moved = value
        if expected and not value:
            raise _refuse(f"the body does not say its {key}")
    return moved


async def _record_move(sessions: Any, record: Connection, domain: str) -> None:
    async with sessions.begin() as session:
        current = await session.get(Connection, record.id, with_for_update=True)
        if current is not None and record_domain(current, domain, "webhook"):
            log.warning("connection %s: the CRM now calls itself %s; recorded", record.name, domain)


@router.post("/bitrix24/{name}")
async def bitrix24_webhook(
    name: str, request: Request, sessions: SessionsDep, settings: SettingsDep
) -> dict[str, str]:
    record = await _connection(sessions, name, "bitrix24")
    body = await _read_body(request, settings.max_webhook_body)
    expected = connections.credentials(settings, record).get("app_token")
    if not expected:
        raise _refuse(
            "this connection has no application token; add the outgoing webhook's token "
            "(connections add ... --app-token) so events can be verified"
        )
    try:
        identity = read_identity("bitrix24", body, request.headers.get("content-type", ""))
    except WebhookParseError as exc:
        raise _refuse(f"not a Bitrix24 event ({exc})") from exc
    if not identity.application_token or not tokens_match(identity.application_token, expected):
        raise _refuse("wrong or missing auth[application_token]")
    moved = _check_identity(record, identity, {"domain": identity.domain, "member_id": identity.account_id})
    if moved:
        await _record_move(sessions, record, moved)
    return await _accept(request, sessions, record, body)


@router.post("/amocrm/{name}/{secret}")
async def amocrm_webhook(
    name: str, secret: str, request: Request, sessions: SessionsDep, settings: SettingsDep
) -> dict[str, str]:
    record = await _connection(sessions, name, "amocrm")
    if not tokens_match(secret, str(connections.credentials(settings, record).get("webhook_secret", ""))):
        raise _refuse("wrong secret in the URL")
    body = await _read_body(request, settings.max_webhook_body)
    try:
        identity = read_identity("amocrm", body, request.headers.get("content-type", ""))
    except WebhookParseError:
        identity = WebhookIdentity()  # authenticated by the secret: store it as failed below
    else:
        claims = {"subdomain": identity.domain, "account_id": identity.account_id}
        moved = _check_identity(record, identity, claims)
        if moved:
            await _record_move(sessions, record, moved)
    return await _accept(request, sessions, record, body)
