"""POST /api/connections/{name}/provision."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse

from app.api.deps import SessionsDep, SettingsDep
from app.connections.connector import connected
from app.connections.health import crm_problem, error_from
from app.funnels.plan import PlanLimitError
from app.funnels.schemas import ProvisionRequest
from app.funnels.service import provision
from app.library import service as library
from connectors.base import CRMError
from funnel_templates.loader import TemplateError
from funnel_templates.schema import FunnelTemplate

router = APIRouter(tags=["provisioning"])

APPLY_FAILED = "what was created before the failure is recorded: the same request again completes the rest"


def requested_template(body: ProvisionRequest) -> tuple[FunnelTemplate, str | None]:
    """The library template the key names, or the body's own template validated (413 when too
    large, 422 listing every problem, before the CRM is called)."""
    if body.template is not None:
        return library.get_template(body.template), None
    try:
        return library.parse_upload((body.template_yaml or "").encode("utf-8"), "template_yaml")
    except library.TemplateTooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
    except TemplateError as exc:
        problems = [
            {"line": p.line, "template": p.template, "field": p.field, "reason": p.reason}
            for p in exc.problems
        ]
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            {"message": "the template is not valid; nothing was written", "problems": problems},
        ) from exc


@router.post("/connections/{name}/provision", response_model=None)
async def provision_template(
    name: str, body: ProvisionRequest, sessions: SessionsDep, settings: SettingsDep
) -> dict[str, Any] | JSONResponse:
    """Plan a template into the connection's CRM; apply it when `dry_run` is false.

    A CRM failure answers 503 when it is transient (down, timed out, rate-limited; Retry-After when
    the CRM said) and 502 when the CRM refused, with `detail` and the CRM's text in `crm_error`. While
    reading the CRM for the plan nothing was written; while applying, the body also carries the plan
    and what was created is recorded: the same request again completes the rest."""
    template, own_text = requested_template(body)
    try:
        async with connected(sessions, settings, name) as (record, connector):
            outcome = await provision(
                sessions, settings, record, connector, template, dry_run=body.dry_run, own_text=own_text
            )
    except PlanLimitError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"cannot provision {template.key}: {exc}; nothing was written",
        ) from exc
    except CRMError as exc:
        problem = crm_problem(exc, "provisioning")
        content = {**problem.body, "detail": f"{problem.body['detail']}; nothing was written"}
        return JSONResponse(status_code=problem.status_code, content=content, headers=problem.headers)
    if outcome.error:
        problem = crm_problem(error_from(outcome.error_class, outcome.error), "provisioning")
        content = {**outcome.as_json(), **problem.body, "detail": f"{problem.body['detail']}; {APPLY_FAILED}"}
        return JSONResponse(status_code=problem.status_code, content=content, headers=problem.headers)
    return outcome.as_json()
