"""Control endpoints under /_sandbox: faults, stats, request log, OAuth codes and "user" actions.

The /_sandbox/deals endpoints change leads as a person in the amoCRM UI would: no rate limit or
auth, but the same validation and the same webhooks as API changes.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from connectors.amocrm.sandbox import leads as lead_logic
from connectors.amocrm.sandbox.api_misc import new_auth_code
from connectors.amocrm.sandbox.common import base, json_body, sandbox
from connectors.amocrm.sandbox.errors import Errors, no_content, not_found
from connectors.amocrm.sandbox.guard import FAULT_KINDS, Fault
from connectors.amocrm.sandbox.state import MANAGER_ID

router = APIRouter(prefix="/_sandbox")


def _bad(detail: str) -> Response:
    return JSONResponse({"error": detail}, status_code=400)


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    box = sandbox(request)
    result = box.guard.stats()
    result["webhooks"] = dict(box.hooks.stats)
    return result


@router.post("/stats/reset")
async def reset_stats(request: Request) -> Response:
    sandbox(request).guard.reset_stats()
    return no_content()


@router.get("/requests")
async def requests_log(request: Request) -> list[dict[str, Any]]:
    return list(sandbox(request).guard.log)


@router.post("/faults")
async def add_fault(request: Request) -> Response:
    body = await json_body(request)
    if not isinstance(body, dict) or body.get("kind") not in FAULT_KINDS:
        return _bad(f"kind must be one of {', '.join(FAULT_KINDS)}")
    fault = Fault(
        kind=body["kind"],
        count=int(body.get("count", 1)),
        method=body.get("method"),
        over_batch=body.get("over_batch"),
        delay=float(body.get("delay", 5.0)),
        after=int(body.get("after", 0)),
    )
    guard = sandbox(request).guard
    if fault.kind == "expired_token":
        guard.expire_tokens()  # takes effect at once, for every token issued so far
    else:
        guard.faults.append(fault)
    return JSONResponse({"kind": fault.kind, "count": fault.count}, status_code=201)


@router.get("/faults")
async def list_faults(request: Request) -> list[dict[str, Any]]:
    return [vars(f) for f in sandbox(request).guard.faults if f.count > 0]


@router.delete("/faults")
async def clear_faults(request: Request) -> Response:
    sandbox(request).guard.faults.clear()
    return no_content()


@router.post("/unblock")
async def unblock(request: Request) -> Response:
    """What amoCRM support does on request: lift the 403 block."""
    guard = sandbox(request).guard
    guard.blocked = False
    guard.rate_limited.clear()
    return no_content()


@router.post("/oauth/code")
async def oauth_code(request: Request) -> dict[str, Any]:
    """Stands in for a user pressing "Allow" in amoCRM: returns what the redirect would carry."""
    state = sandbox(request).state
    return {
        "code": new_auth_code(state),
        "referer": state.config.host,
        "client_id": state.config.client_id,
        "redirect_uri": state.config.redirect_uri,
    }


@router.get("/webhooks/deliveries")
async def deliveries(request: Request) -> list[dict[str, Any]]:
    return list(sandbox(request).hooks.posts)


@router.post("/save")
async def save(request: Request) -> Response:
    sandbox(request).state.save()
    return no_content()


# --- user actions on leads ------------------------------------------------------------------------


@router.post("/deals")
async def create_deal(request: Request) -> Response:
    box = sandbox(request)
    item = await json_body(request)
    if not isinstance(item, dict):
        return _bad("body must be a lead object")
    errors = Errors()
    values = lead_logic.validate(box.state, errors, "0", item, None)
    errors.raise_if_any()
    lead, events = lead_logic.create(box.state, item, values or {}, int(item.get("created_by", MANAGER_ID)))
    box.hooks.emit(events)
    return JSONResponse(lead_logic.lead_out(lead, base(request)), status_code=201)


@router.post("/deals/bulk")
async def create_deals(request: Request) -> Response:
    """Create `count` leads at once (test and demo setup). `notify: false` sends no webhooks."""
    box = sandbox(request)
    body = await json_body(request)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("count"), int)
        or not 0 < body["count"] <= 100_000
    ):
        return _bad("count must be an integer between 1 and 100000")
    template = {k: v for k, v in body.items() if k not in ("count", "notify")}
    errors = Errors()
    values = lead_logic.validate(box.state, errors, "0", template, None)
    errors.raise_if_any()
    ids, events = [], []
    for n in range(body["count"]):
        item = dict(template, name=f"{template.get('name', 'Сделка')} {n + 1}")
        lead, evs = lead_logic.create(box.state, item, values or {}, MANAGER_ID)
        ids.append(lead["id"])
        events += evs
    if body.get("notify", True):
        box.hooks.emit(events)
    return JSONResponse({"ids": ids}, status_code=201)


def _lead_or_none(request: Request, lead_id: int) -> dict[str, Any] | None:
    return sandbox(request).state.leads.get(str(lead_id))


@router.post("/deals/{lead_id:int}/update")
async def update_deal(request: Request, lead_id: int) -> Response:
    """Change any of name, price, status_id, pipeline_id, responsible_user_id, loss_reason_id,
    custom_fields_values — one webhook POST with update (+ status / responsible) events."""
    box = sandbox(request)
    lead = _lead_or_none(request, lead_id)
    if lead is None or lead["is_deleted"]:
        return not_found("Lead not found")
    item = await json_body(request)
    if not isinstance(item, dict):
        return _bad("body must be an object")
    errors = Errors()
    values = lead_logic.validate(box.state, errors, "0", item, lead)
    errors.raise_if_any()
    box.hooks.emit(
        lead_logic.apply(box.state, lead, item, values or {}, int(item.get("updated_by", MANAGER_ID)))
    )
    return JSONResponse(lead_logic.lead_out(lead, base(request)))


@router.post("/deals/{lead_id:int}/move")
async def move_deal(request: Request, lead_id: int) -> Response:
    return await update_deal(request, lead_id)


@router.post("/deals/{lead_id:int}/delete")
async def delete_deal(request: Request, lead_id: int) -> Response:
    box = sandbox(request)
    lead = _lead_or_none(request, lead_id)
    if lead is None or lead["is_deleted"]:
        return not_found("Lead not found")
    old = copy.deepcopy(lead)
    lead["is_deleted"] = True
    box.state.touch(lead, MANAGER_ID)
    box.hooks.emit([("delete", lead, old)])
    return no_content()


@router.post("/deals/{lead_id:int}/restore")
async def restore_deal(request: Request, lead_id: int) -> Response:
    box = sandbox(request)
    lead = _lead_or_none(request, lead_id)
    if lead is None or not lead["is_deleted"]:
        return not_found("No deleted lead with this id")
    old = copy.deepcopy(lead)
    lead["is_deleted"] = False
    box.state.touch(lead, MANAGER_ID)
    box.hooks.emit([("restore", lead, old)])
    return JSONResponse(lead_logic.lead_out(lead, base(request)))
