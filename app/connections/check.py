"""`connections check`: call the CRM once and say in plain words what is wrong, if anything."""

from __future__ import annotations

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

_ADVICE = {
    "bitrix24": "create a new inbound webhook (or reinstall the app) and update the connection",
    "amocrm": "issue a new long-lived token or authorization code and update the connection",
}


async def check_connection(record: Connection, connector: CRMConnector) -> CheckResult:
    try:
        info = await connector.check()
    except AuthError as exc:
        problem = f"the CRM rejected the credentials ({exc.crm_text}); {_ADVICE[record.crm]}"
    except AccountBlocked as exc:
        problem = f"the CRM has blocked this account's API access ({exc.crm_text}); contact the CRM's support"
    except RateLimited as exc:
        problem = f"the CRM is rate-limiting this account right now ({exc.crm_text}); try again shortly"
    except Retryable as exc:
        problem = f"the CRM could not be reached ({exc.crm_text}); check the URL and the network"
    except PermanentError as exc:
        problem = f"the CRM refused the request ({exc.crm_text})"
    except CRMError as exc:
        problem = f"unexpected CRM error ({exc.crm_text})"
    else:
        missing = list(info.missing_scopes)
        return CheckResult(
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
    return CheckResult(name=record.name, ok=False, problem=problem)
