"""Control endpoints of the Bitrix24 sandbox under /_sandbox, for tests and demos: stats, faults,
OAuth tokens, config, deals changed as a manager in the UI would, the event delivery log, state."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from connectors.bitrix24.sandbox import contacts, deals
from connectors.bitrix24.sandbox.api import ApiError
from connectors.bitrix24.sandbox.common import sandbox
from connectors.bitrix24.sandbox.config import SandboxConfig
from connectors.bitrix24.sandbox.engine import WAITABLE_COUNTERS, WAITABLE_GROUPS, Fault, Stats
from connectors.bitrix24.sandbox.rest import FAULT_KINDS

router = APIRouter(prefix="/_sandbox")


# --- stats, faults, OAuth --------------------------------------------------------------------------


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    return sandbox(request).portal.stats.as_json()


@router.post("/stats/reset")
async def reset_stats(request: Request) -> dict[str, Any]:
    portal = sandbox(request).portal
    portal.stats.changed()  # whoever waits on the old counters looks again, at the new ones
    portal.stats = Stats()
    return {"ok": True}


@router.post("/stats/wait")
async def wait_for_stats(request: Request) -> Response:
    """Answer once the counters reach what the body names, e.g. {"by_method": {"batch": 1},
    "commands": {"crm.item.update": 50}, "timeout": 60}: the stats, or 408 with them on timeout."""
    spec = await request.json()
    unknown = sorted(set(spec) - {"timeout", *WAITABLE_GROUPS, *WAITABLE_COUNTERS})
    if unknown:  # a name the wait ignored would answer at once: a test would not have waited
        return JSONResponse(
            {"error": f"cannot wait on {unknown}", "waitable": [*WAITABLE_GROUPS, *WAITABLE_COUNTERS]},
            status_code=400,
        )
    wanted: dict[str, Any] = {group: dict(spec[group]) for group in WAITABLE_GROUPS if group in spec}
    wanted.update({name: int(spec[name]) for name in WAITABLE_COUNTERS if name in spec})
    portal = sandbox(request).portal
    try:
        async with asyncio.timeout(float(spec.get("timeout", 60))):
            await portal.stats.wait_until(wanted)
    except TimeoutError:
        return JSONResponse(portal.stats.as_json(), status_code=408)
    return JSONResponse(portal.stats.as_json())


@router.post("/faults")
async def add_fault(request: Request) -> Response:
    spec = await request.json()
    kind = str(spec.get("kind", ""))
    if kind not in FAULT_KINDS:
        return JSONResponse({"error": f"unknown fault kind {kind!r}", "kinds": FAULT_KINDS}, status_code=400)
    sandbox(request).portal.faults.append(
        Fault(
            kind,
            int(spec.get("count", 1)),
            spec.get("method"),
            float(spec.get("seconds", 5.0)),
            after=int(spec.get("after", 0)),
        )
    )
    return JSONResponse({"ok": True})


@router.delete("/faults")
async def clear_faults(request: Request) -> dict[str, Any]:
    sandbox(request).portal.faults.clear()
    return {"ok": True}


@router.post("/oauth/expire")
async def expire_tokens(request: Request) -> dict[str, Any]:
    sandbox(request).portal.expire_tokens()
    return {"ok": True}


@router.get("/oauth")
async def oauth_state(request: Request) -> dict[str, Any]:
    portal = sandbox(request).portal
    return {
        "refresh_token": portal.refresh_token,
        "refreshes": portal.stats.token_refreshes,
        "token_uses": dict(portal.stats.token_uses),
    }


# --- config ----------------------------------------------------------------------------------------


def _drop_percent_error(spec: dict[str, Any]) -> str | None:
    drop = spec.get("webhook_drop_percent")
    if "webhook_drop_percent" in spec and (
        not isinstance(drop, int) or isinstance(drop, bool) or not 0 <= drop <= 100
    ):
        return f"webhook_drop_percent must be an integer 0..100, not {drop!r}"
    return None


def _apply_config(config: SandboxConfig, spec: dict[str, Any]) -> None:
    if "scopes" in spec:
        config.scopes = tuple(spec["scopes"])
    if "operating_cost" in spec:
        config.operating_cost = {str(k): float(v) for k, v in spec["operating_cost"].items()}
    if "webhook_url" in spec:
        config.webhook_url = spec["webhook_url"]
    if "webhook_drop_percent" in spec:
        config.webhook_drop_percent = spec["webhook_drop_percent"]


@router.post("/config")
async def change_config(request: Request) -> Response:
    box = sandbox(request)
    spec = await request.json()
    error = _drop_percent_error(spec)
    if error is not None:  # checked before anything changes: a bad request leaves the config as it was
        return JSONResponse({"error": error}, status_code=400)
    _apply_config(box.config, spec)
    if "webhook_drop_percent" in spec:
        box.events.restart_drop_pattern()
    return JSONResponse({"ok": True})


# --- deals changed in the UI -----------------------------------------------------------------------


@router.post("/deals")
async def sim_create(request: Request) -> Response:
    box = sandbox(request)
    spec = await request.json()
    ctx = box.ui_context(spec.get("user_id"))
    deal = deals.create_deal(ctx, spec.get("fields", {}), by_user=ctx.user_id)
    box.after_ui_change(request, ctx)
    return JSONResponse({"ID": deal["ID"]})


@router.post("/deals/bulk")
async def sim_bulk(request: Request) -> Response:
    spec = await request.json()
    ctx = sandbox(request).ui_context()
    ids = deals.seed_deals(
        ctx, int(spec.get("count", 1)), int(spec.get("category_id", 0)), spec.get("title", "Deal")
    )
    return JSONResponse(
        {"count": len(ids), "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}
    )


@router.post("/deals/{deal_id}")
async def sim_update(deal_id: int, request: Request) -> Response:
    box = sandbox(request)
    spec = await request.json()
    ctx = box.ui_context(spec.get("user_id"))
    deal = box.portal.state.deals.get(deal_id)
    if deal is None:
        return JSONResponse({"error": "NOT_FOUND"}, status_code=404)
    try:
        deals.change_deal(ctx, deal, spec.get("fields", {}), by_user=ctx.user_id, allow_category=True)
    except ApiError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    box.after_ui_change(request, ctx)
    return JSONResponse({"ok": True})


@router.delete("/deals/{deal_id}")
async def sim_delete(deal_id: int, request: Request) -> Response:
    box = sandbox(request)
    ctx = box.ui_context()
    try:
        deals.remove_deal(ctx, deal_id)
    except ApiError as exc:
        return JSONResponse(exc.body(), status_code=404)
    box.after_ui_change(request, ctx)
    return JSONResponse({"ok": True})


# --- contacts made in the UI ------------------------------------------------------------------------


@router.post("/contacts")
async def sim_contact(request: Request) -> Response:
    """A manager adds a client: {"fields": {NAME, PHONE: [{VALUE, VALUE_TYPE}], EMAIL, IM}, "deal_id":
    bind to this deal, "primary": make it the deal's primary contact}. Answers {"ID"}."""
    box = sandbox(request)
    spec = await request.json()
    ctx = box.ui_context(spec.get("user_id"))
    deal_id = spec.get("deal_id")
    if deal_id is not None and int(deal_id) not in box.portal.state.deals:
        return JSONResponse({"error": "NOT_FOUND"}, status_code=404)
    try:
        contact = contacts.create_contact(ctx, spec.get("fields", {}))
    except ApiError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    if deal_id is not None:
        contacts.add_binding(
            ctx, int(deal_id), int(contact["ID"]), primary=bool(spec.get("primary")), sort=None
        )
    box.after_ui_change(request, ctx)
    return JSONResponse({"ID": contact["ID"]})


# --- deliveries and state ----------------------------------------------------------------------------


@router.get("/webhooks")
async def webhook_log(request: Request) -> list[dict[str, Any]]:
    return sandbox(request).events.log


@router.get("/state")
async def dump_state(request: Request) -> dict[str, Any]:
    return sandbox(request).portal.state.to_json()


@router.post("/save")
async def save_state(request: Request) -> dict[str, Any]:
    box = sandbox(request)
    box.portal.state.save(box.config)
    return {"ok": True, "file": box.config.state_file}
