"""`connections check`: call the CRM once and say in plain words what is wrong, if anything."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.connector import domain_of
from app.connections.health import crm_error_text
from app.connections.models import Connection
from app.connections.schemas import CheckResult
from connectors.base import (
    AccountBlocked,
    AccountInfo,
    AuthError,
    CRMConnector,
    CRMError,
    PermanentError,
    RateLimited,
    Retryable,
)
from connectors.descriptor import descriptor_for

log = logging.getLogger("funnelsync.connections")


@dataclass
class Checked:
    result: CheckResult
    # The CRM failure behind `result.problem`; None when the CRM answered (missing rights included).
    error: CRMError | None = None


async def check_connection(
    record: Connection,
    connector: CRMConnector,
    sessions: async_sessionmaker[AsyncSession] | None = None,
) -> Checked:
    """Call the CRM once. With `sessions`, the account id it names is recorded (when the connection
    has none yet): webhooks naming another account are refused from then on."""
    try:
        info = await connector.check()
    except CRMError as exc:
        return Checked(CheckResult(name=record.name, ok=False, problem=_problem(record, exc)), exc)
    if sessions is not None:
        await record_account_id(sessions, record, info)
    missing = list(info.missing_scopes)
    return Checked(
        CheckResult(
            name=record.name,
            ok=not missing,
            account_id=info.account_id,
            account_name=info.name,
            scopes=list(info.scopes),
            missing_scopes=missing,
            problem=("missing rights: " + ", ".join(missing) + "; grant them to the webhook or app")
            if missing
            else None,
        )
    )


def account_id_to_record(record: Connection, info: AccountInfo) -> str | None:
    """The id the check names, when it is one webhooks carry and the connection has none yet. A
    CRM that knows no id names the account by its address (a Bitrix24 inbound webhook): not an id."""
    key = descriptor_for(record.crm).account_id_setting
    if not info.account_id or (record.settings or {}).get(key):
        return None
    return None if info.account_id.lower() == domain_of(record).lower() else info.account_id


async def record_account_id(
    sessions: async_sessionmaker[AsyncSession], record: Connection, info: AccountInfo
) -> None:
    if account_id_to_record(record, info) is None:
        return
    key = descriptor_for(record.crm).account_id_setting
    async with sessions.begin() as session:
        current = await session.get(Connection, record.id, with_for_update=True)
        if current is None or (current.settings or {}).get(key):
            return  # gone, or a concurrent check recorded it first
        current.settings = {**(current.settings or {}), key: info.account_id}
    record.settings = {**(record.settings or {}), key: info.account_id}
    log.info("connection %s: account id %s recorded", record.name, info.account_id)


def _problem(record: Connection, exc: CRMError) -> str:
    text = crm_error_text(exc)
    if isinstance(exc, AuthError):
        return f"the CRM rejected the credentials ({text}); {descriptor_for(record.crm).credentials_advice}"
    if isinstance(exc, AccountBlocked):
        return f"the CRM has blocked this account's API access ({text}); contact the CRM's support"
    if isinstance(exc, RateLimited):
        return f"the CRM is rate-limiting this account right now ({text}); try again shortly"
    if isinstance(exc, Retryable):
        return f"the CRM could not be reached ({text}); check the URL and the network, or try again later"
    if isinstance(exc, PermanentError):
        return f"the CRM refused the request ({text})"
    return f"unexpected CRM error ({text})"
