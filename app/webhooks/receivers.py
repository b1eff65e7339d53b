"""POST /webhooks/{crm}/{connection} and /webhooks/{crm}/{connection}/{secret}: one receiver for
every registered CRM. The CRM's descriptor says which of the two URLs it uses and how a delivery
proves its sender (a token in the body, or the secret in the URL), which claims in a body are
compared with the connection, and how refusals name the token.

An accepted delivery is committed to the inbox before the 2xx goes out, so an acknowledged event is
never lost; a forged one is refused with 401 and nothing stored. A connection name that does not
exist is answered exactly like a wrong credential, so the answers do not tell which names exist. A body we can authenticate but not
parse is still stored (as failed) and acknowledged: the CRMs disable hooks that answer with errors.
Processing happens later, in the inbox job, which this wakes; while many deliveries are in flight
the job gives way to them (app.webhooks.intake).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from app import metrics
from app.api.deps import get_sessions, get_settings_from_app
from app.config import Settings
from app.connections.connector import record_domain
from app.connections.models import Connection
from app.funnels.webhook_upkeep import note_webhook_seen
from app.security import tokens_match
from app.waker import INBOX_JOB, get_waker
from app.webhooks.group_commit import Delivery, committer
from app.webhooks.known_connections import (
    KnownConnection,
    KnownConnections,
    StaleConnection,
    known_connections,
)
from app.webhooks.service import dedupe_key, strip_token
from connectors.descriptor import BodyToken, CRMDescriptor, UnknownCRM, UrlSecret, descriptor_for
from connectors.events import WebhookIdentity, WebhookParseError, parse_deal_events, read_identity

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
log = logging.getLogger("funnelsync.webhooks")


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


def _stored_credentials(descriptor: CRMDescriptor, known: KnownConnection | None) -> dict[str, Any]:
    """The connection's credentials; for a name that does not exist, a random credential no
    delivery can match, so it is refused by the same steps and words as a wrong one."""
    if known is None:
        return {descriptor.webhook_auth.credential: secrets.token_urlsafe(32)}
    return known.credentials


class Refused(HTTPException):
    """401: the delivery does not prove it comes from the connection's account."""


def _refuse(reason: str) -> Refused:
    return Refused(status.HTTP_401_UNAUTHORIZED, f"webhook refused: {reason}")


async def _accept(request: Request, sessions: Any, known: KnownConnection, body: bytes) -> dict[str, str]:
    record = known.record
    content_type = request.headers.get("content-type", "")
    error = None
    keys: list[str] = []
    try:
        keys = [e.dedupe_key for e in parse_deal_events(record.crm, body, content_type)]
    except WebhookParseError as exc:
        error = f"cannot parse webhook body: {exc}"
    # The key from the body as received, so a delivery is a duplicate exactly when it was before;
    # the body stored without its token (verified by now, never needed again).
    key = dedupe_key(keys, body)
    # Committed (with the deliveries arriving alongside) before the answer: see group_commit.
    delivery = Delivery(record.id, key, strip_token(body), content_type, error, known.stamp)
    new = await committer(sessions).store(delivery)
    if new and error is None:
        get_waker(request).wake(INBOX_JOB)
    outcome = "duplicate" if not new else "unparseable" if error else "accepted"
    metrics.EVENTS_RECEIVED.labels(crm=record.crm, outcome=outcome).inc()
    return {"status": "accepted" if new else "duplicate"}


def _check_identity(descriptor: CRMDescriptor, record: Connection, identity: WebhookIdentity) -> str | None:
    """Compare what the body claims (its account's address and id) with what we know about the
    connection. Returns the new address the body names when the account was renamed: its token or
    our URL secret already proved the sender, so a new address is recorded, not refused. Ids never
    change: a different one is refused."""
    address = descriptor.domain_setting
    claims = {address: identity.domain, descriptor.account_id_setting: identity.account_id}
    moved = None
    for key, value in claims.items():
        if value and not _is_text(value):
            raise _refuse(f"the body's {key} is not valid text")
        expected = record.settings.get(key)
        if expected and value and str(expected).lower() != str(value).lower():
            if key != address:
                raise _refuse(f"{key} {value!r} does not match this connection")
            moved = value
        if expected and not value:
            raise _refuse(f"the body does not say its {key}")
    return moved


def _is_text(value: object) -> bool:
    """False for a string with a lone surrogate (a JSON escape such as "\\udfff"): no account is
    named so, and recording or logging one would fail later, far from here."""
    try:
        str(value).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _record_move(sessions: Any, record: Connection, domain: str) -> None:
    async with sessions.begin() as session:
        current = await session.get(Connection, record.id, with_for_update=True)
        if current is not None and record_domain(current, domain, "webhook"):
            log.warning("connection %s: the CRM now calls itself %s; recorded", record.name, domain)


def _descriptor(crm: str, secret: str | None) -> CRMDescriptor:
    """The CRM of a webhook URL. A CRM we do not know, or a URL of the other shape than the CRM's
    (a secret where it has none, none where it has one), is a path we do not serve."""
    try:
        descriptor = descriptor_for(crm)
    except UnknownCRM:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found") from None
    if descriptor.webhook_secret_in_url != (secret is not None):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    return descriptor


# The app's sessions and settings are read with the shared getters called directly rather than as
# SessionsDep/SettingsDep: FastAPI runs a plain-def dependency in its thread pool, two thread hops per
# delivery that a burst of webhooks feels (issue #14).


@router.post("/{crm}/{name}")
async def webhook(crm: str, name: str, request: Request) -> dict[str, str]:
    """A CRM whose events carry a token (Bitrix24: auth[application_token])."""
    descriptor = _descriptor(crm, None)
    return await _receive(
        descriptor, name, None, request, get_sessions(request), get_settings_from_app(request)
    )


@router.post("/{crm}/{name}/{secret}")
async def webhook_with_secret(crm: str, name: str, secret: str, request: Request) -> dict[str, str]:
    """A CRM that does not sign its webhooks (amoCRM): the secret in the URL proves the sender."""
    descriptor = _descriptor(crm, secret)
    return await _receive(
        descriptor, name, secret, request, get_sessions(request), get_settings_from_app(request)
    )


# A delivery is checked at most this many times: once against the kept row, then against rows read
# for it when the kept one refused it or changed before its commit (a row changing twice in that
# moment is the only way to use the third).
_CHECKS = 3


async def _receive(
    descriptor: CRMDescriptor,
    name: str,
    secret: str | None,
    request: Request,
    sessions: Any,
    settings: Settings,
) -> dict[str, str]:
    """Check the delivery against the connection (kept between deliveries, see
    app.webhooks.known_connections) and store it. A refusal is made only on a row read for this
    delivery; a delivery whose row changed before its commit is checked again."""
    rows = known_connections(sessions)
    body: bytes | None = None
    for attempt in range(_CHECKS):
        kept = await rows.get(settings, name, fresh=attempt > 0)
        read_now = kept is None or kept.fresh  # None: read now, and no connection has the name
        # A connection of the other CRM is answered like a name that does not exist.
        known = kept if kept is not None and kept.record.crm == descriptor.name else None
        try:
            if isinstance(descriptor.webhook_auth, UrlSecret):  # before reading the body
                _check_url_secret(descriptor.webhook_auth, secret, known, descriptor)
            if body is None:
                body = await _read_body(request, settings.max_webhook_body)
            return await _check_and_accept(descriptor, known, rows, request, sessions, settings, body)
        except Refused:
            if read_now:
                raise
        except StaleConnection:
            continue
    raise HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the connection changed while the delivery was stored; deliver again",
    )


def _check_url_secret(
    auth: UrlSecret, secret: str | None, known: KnownConnection | None, descriptor: CRMDescriptor
) -> None:
    """The secret in our URL, checked before the body is read."""
    stored = _stored_credentials(descriptor, known)
    if not tokens_match(secret, str(stored.get(auth.credential, ""))):
        raise _refuse("wrong secret in the URL")


async def _check_and_accept(
    descriptor: CRMDescriptor,
    known: KnownConnection | None,
    rows: KnownConnections,
    request: Request,
    sessions: Any,
    settings: Settings,
    body: bytes,
) -> dict[str, str]:
    """The body's claims against the connection (its URL secret is checked already), then store."""
    auth = descriptor.webhook_auth
    if isinstance(auth, UrlSecret):
        identity = _identity_if_readable(descriptor, request, body)
    else:
        stored = _stored_credentials(descriptor, known)
        identity = _identity_with_token(descriptor, auth, request, body, stored.get(auth.credential))
    if known is None:  # unreachable: nothing matches the random credential
        raise _refuse("wrong credential")
    if identity is not None:
        moved = _check_identity(descriptor, known.record, identity)
        if moved:
            await _record_move(sessions, known.record, moved)
            rows.forget(known.record.name)  # this delivery's stamp is stale now: checked again
    # The token matched: a hook registered by hand is in place.
    if isinstance(auth, BodyToken) and await note_webhook_seen(
        sessions, settings, known.record, known.credentials
    ):
        rows.forget(known.record.name)
    return await _accept(request, sessions, known, body)


def _identity_if_readable(descriptor: CRMDescriptor, request: Request, body: bytes) -> WebhookIdentity | None:
    """Who the body claims to be from, or None when it cannot be read: already authenticated by the
    URL secret, it is then stored as failed."""
    try:
        return read_identity(descriptor.name, body, request.headers.get("content-type", ""))
    except WebhookParseError:
        return None


def _identity_with_token(
    descriptor: CRMDescriptor, auth: BodyToken, request: Request, body: bytes, expected: Any
) -> WebhookIdentity:
    """Who the body claims to be from, once the token it carries matched the stored one."""
    if not expected:
        raise _refuse(auth.not_stored)
    try:
        identity = read_identity(descriptor.name, body, request.headers.get("content-type", ""))
    except WebhookParseError as exc:
        raise _refuse(f"not a {descriptor.display_name} event ({exc})") from exc
    if not identity.application_token or not tokens_match(identity.application_token, str(expected)):
        raise _refuse(f"wrong or missing {auth.carried_in}")
    return identity
