"""POST /api/connections/{name}/provision."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse

from app.api.deps import SessionsDep, SettingsDep
from app.connections.connector import connected
from app.funnels.plan import PlanLimitError
from app.funnels.schemas import ProvisionRequest
from app.funnels.service import provision
from app.library import service as library

router = APIRouter(tags=["provisioning"])


@router.post("/connections/{name}/provision", response_model=None)
async def provision_template(
    name: str, body: ProvisionRequest, sessions: SessionsDep, settings: SettingsDep
) -> dict[str, Any] | JSONResponse:
    """Plan a template into the connection's CRM; apply it when `dry_run` is false.

    A CRM error while applying answers 502 with the plan, the CRM's error text and the promise that
    what was created is recorded: the same request again completes the rest."""
    template = library.get_template(body.template)
    try:
        async with connected(sessions, settings, name) as (record, connector):
            outcome = await provision(sessions, settings, record, connector, template, dry_run=body.dry_run)
    except PlanLimitError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"cannot provision {template.key}: {exc}; nothing was written",
        ) from exc
    if outcome.error:
        return JSONResponse(status_code=status.HTTP_502_BAD_GATEWAY, content=outcome.as_json())
    return outcome.as_json()
