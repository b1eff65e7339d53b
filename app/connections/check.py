"""`connections check`: call the CRM once and say in plain words what is wrong, if anything."""

from __future__ import annotations

from dataclasses import dataclass

from app.connections.health import crm_error_text
from app.connections.models import Connection
from app.connections.schemas import CheckResult
from connectors.base import (
    AccountBlocked,
    AuthError,
    CRMConnector,
    CRMError,
    PermanentError,
    RateLimited,
    Retryable,
)
from connectors.descriptor import descriptor_for


@dataclass
class Checked:
    result: CheckResult
    # The CRM failure behind `result.problem`; None when the CRM answered (missing rights included).
    error: CRMError | None = None


async def check_connection(record: Connection, connector: CRMConnector) -> Checked:
    try:
        info = await connector.check()
    except CRMError as exc:
        return Checked(CheckResult(name=record.name, ok=False, problem=_problem(record, exc)), exc)
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
