"""Test controls for what happens in a real portal around a client's calls, without sleeping:

- `POST /_sandbox/permissions` {"user_id": 1, "deny_edit": [12, 15]}: that user (default: the
  inbound webhook's user) may read those deals but not change them. crm.item.update and
  crm.timeline.comment.add then answer `ACCESS_DENIED` "Access denied", legacy crm.deal.update an
  empty code with "Access denied" (DOCS crm-item-update.md, crm-timeline-comment-add.md,
  crm-deal-update.md error tables); inside `batch` that is the command's result_error only.
- `POST /_sandbox/triggers` {"method": "crm.deal.list", "after": 1, "action": "update_deal",
  "deal_id": 5, "fields": {...}}: once `method` has run `after` more times (batch commands count),
  a manager changes the deal (as `config.ui_user`), or ("action": "bind_handler", "event",
  "handler") another installer binds an event handler. This is how a test puts a change between
  two page requests, or between event.get and event.bind.
- `POST /_sandbox/clock` {"advance": 60}: the portal's clock runs that many seconds ahead, so a
  change made now gets a later DATE_MODIFY than deals made before (one-second resolution).
- `POST /_sandbox/webhook/revoke`: an administrator deletes the inbound webhook; its URL answers
  401 NO_AUTH_FOUND from then on (DOCS _includes/system-errors.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from connectors.bitrix24.sandbox import crm, deals
from connectors.bitrix24.sandbox.config import SandboxConfig
from connectors.bitrix24.sandbox.engine import HANDLERS, Auth, Portal, Trigger


def _update_deal(portal: Portal, params: dict[str, Any]) -> None:
    user = int(params.get("user_id") or portal.config.ui_user)
    deal = portal.state.deals.get(int(params["deal_id"]))
    if deal is None:  # deleted since the trigger was set: nothing left to change
        return
    ctx = portal.context(Auth("webhook", user))
    deals.change_deal(ctx, deal, dict(params.get("fields") or {}), by_user=user, allow_category=True)


def _bind_handler(portal: Portal, params: dict[str, Any]) -> None:
    ctx = portal.context(Auth("oauth", portal.config.webhook_user))
    crm.event_bind(ctx, {"event": params["event"], "handler": params["handler"]})


ACTIONS: dict[str, Callable[[Portal, dict[str, Any]], None]] = {
    "update_deal": _update_deal,
    "bind_handler": _bind_handler,
}


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def install(app: FastAPI, portal: Portal, config: SandboxConfig) -> None:
    portal.trigger_actions.update(ACTIONS)

    @app.post("/_sandbox/permissions")
    async def set_permissions(request: Request) -> Response:
        spec = await request.json()
        user = spec.get("user_id", config.webhook_user)
        denied = spec.get("deny_edit")
        if (
            not isinstance(user, int)
            or not isinstance(denied, list)
            or not all(isinstance(i, int) for i in denied)
        ):
            return _bad('give {"user_id": int (optional), "deny_edit": [deal ids]}')
        portal.state.edit_denied[user] = set(denied)
        portal.dirty = True
        return JSONResponse({"ok": True, "user_id": user, "deny_edit": sorted(denied)})

    @app.get("/_sandbox/permissions")
    async def get_permissions() -> dict[str, Any]:
        return {str(u): sorted(ids) for u, ids in portal.state.edit_denied.items()}

    @app.post("/_sandbox/triggers")
    async def add_trigger(request: Request) -> Response:
        spec = dict(await request.json())
        method = str(spec.pop("method", "")).lower()
        after = spec.pop("after", 1)
        action = str(spec.pop("action", ""))
        if method not in HANDLERS or not isinstance(after, int) or after < 1:
            return _bad('give "method" (a sandbox REST method) and "after" (>= 1)')
        if action == "update_deal":
            if not isinstance(spec.get("deal_id"), int) or spec["deal_id"] not in portal.state.deals:
                return _bad("update_deal needs the id of an existing deal in deal_id")
            if not isinstance(spec.get("fields", {}), dict):
                return _bad("update_deal takes fields as an object")
        elif action == "bind_handler":
            event, handler = str(spec.get("event", "")).upper(), str(spec.get("handler", ""))
            if event not in crm.DEAL_EVENTS or not handler.startswith(("http://", "https://")):
                return _bad("bind_handler needs a deal event name and an http(s) handler URL")
        else:
            return _bad(f"unknown action {action!r}; one of {sorted(ACTIONS)}")
        portal.triggers.append(Trigger(method, after, action, spec))
        return JSONResponse({"ok": True})

    @app.get("/_sandbox/triggers")
    async def pending_triggers() -> list[dict[str, Any]]:
        """Triggers that have not fired yet."""
        return [
            {"method": t.method, "after": t.after, "seen": t.seen, "action": t.action}
            for t in portal.triggers
        ]

    @app.delete("/_sandbox/triggers")
    async def clear_triggers() -> dict[str, Any]:
        portal.triggers.clear()
        return {"ok": True}

    @app.post("/_sandbox/clock")
    async def advance_clock(request: Request) -> Response:
        spec = await request.json()
        seconds = spec.get("advance")
        if not isinstance(seconds, int | float) or seconds < 0:
            return _bad('give {"advance": seconds >= 0}')
        portal.clock.offset += float(seconds)
        return JSONResponse({"ok": True, "offset": portal.clock.offset})

    @app.post("/_sandbox/webhook/revoke")
    async def revoke_webhook() -> dict[str, Any]:
        config.webhook_code = secrets.token_hex(8)
        return {"ok": True}
