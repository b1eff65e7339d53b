"""/api/v4/account, tasks, lead notes, webhooks and the OAuth token endpoint."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from connectors.amocrm.sandbox.common import array_body, base, is_int, json_body, sandbox, user_id
from connectors.amocrm.sandbox.errors import Errors, hal, no_content, not_found, oauth_problem, request_ids
from connectors.amocrm.sandbox.paging import paged
from connectors.amocrm.sandbox.state import WEBHOOK_EVENTS, SandboxState

router = APIRouter()
NOTE_TYPES = [
    "common",
    "call_in",
    "call_out",
    "service_message",
    "extended_service_message",
    "message_cashier",
    "geolocation",
    "sms_in",
    "sms_out",
    "attachment",
]


@router.get("/api/v4/account")
async def account(request: Request) -> Response:
    state = sandbox(request).state
    cfg = state.config
    return hal(
        {
            "id": cfg.account_id,
            "name": cfg.account_name,
            "subdomain": cfg.subdomain,
            "created_at": state.data["created_at"],
            "created_by": 0,
            "updated_at": state.data["created_at"],
            "updated_by": 0,
            "current_user_id": user_id(request),
            "country": "RU",
            "currency": "RUB",
            "currency_symbol": "₽",
            "customers_mode": "disabled",
            "is_unsorted_on": True,
            "mobile_feature_version": 0,
            "is_loss_reason_enabled": True,
            "is_helpbot_enabled": False,
            "is_technical_account": False,
            "contact_name_display_order": 1,
            "_links": {"self": {"href": base(request) + "/api/v4/account"}},
        }
    )


@router.get("/api/v4/tasks")
async def list_tasks(request: Request) -> Response:
    """Tasks, optionally of one entity type (filter[entity_type]) and some entities
    (filter[entity_id][]); 204 when there are none, like the API."""
    state = sandbox(request).state
    wanted = {v for k, v in request.query_params.multi_items() if k.startswith("filter[entity_id]")}
    entity_type = request.query_params.get("filter[entity_type]")
    tasks = [
        t
        for t in state.data["tasks"]
        if (not wanted or str(t.get("entity_id")) in wanted)
        and (not entity_type or t.get("entity_type") == entity_type)
    ]
    return paged(request, tasks, "tasks")


@router.patch("/api/v4/tasks")
async def update_tasks(request: Request) -> Response:
    """Edit tasks in bulk: each item names its task by `id`; the answer lists id and updated_at."""
    state = sandbox(request).state
    items = await array_body(request)
    rids = request_ids(items)
    tasks = {t["id"]: t for t in state.data["tasks"]}
    errors = Errors()
    for rid, item in zip(rids, items, strict=True):
        if not is_int(item.get("id")) or item["id"] not in tasks:
            errors.choice(rid, "id")
        if "complete_till" in item and not is_int(item["complete_till"]):
            errors.type(rid, "complete_till", "int")
    errors.raise_if_any()
    out = []
    for rid, item in zip(rids, items, strict=True):
        task = tasks[item["id"]]
        for key in ("complete_till", "text", "responsible_user_id", "is_completed"):
            if key in item:
                task[key] = item[key]
        task["updated_at"] = state.now()
        out.append({"id": task["id"], "updated_at": task["updated_at"], "request_id": rid})
    return hal({"_links": {"self": {"href": base(request) + "/api/v4/tasks"}}, "_embedded": {"tasks": out}})


@router.post("/api/v4/tasks")
async def create_tasks(request: Request) -> Response:
    state = sandbox(request).state
    items = await array_body(request)
    rids = request_ids(items)
    errors = Errors()
    for rid, item in zip(rids, items, strict=True):
        if not isinstance(item.get("text"), str) or not item["text"].strip():
            errors.blank(rid, "text")
        if not is_int(item.get("complete_till")):
            errors.type(rid, "complete_till", "int")
        if "entity_type" in item and item["entity_type"] not in (
            "leads",
            "contacts",
            "companies",
            "customers",
        ):
            errors.choice(rid, "entity_type")
        if item.get("entity_type") == "leads":
            lead = state.leads.get(str(item.get("entity_id")))
            if lead is None or lead["is_deleted"]:
                errors.choice(rid, "entity_id")
        if "responsible_user_id" in item and item["responsible_user_id"] not in state.user_ids():
            errors.choice(rid, "responsible_user_id")
        if "task_type_id" in item and item["task_type_id"] not in (1, 2):
            errors.choice(rid, "task_type_id")
    _all_or_nothing(state, errors)
    out = []
    for rid, item in _valid(rids, items, errors):
        task = {
            "id": state.next_id("task"),
            "text": item["text"],
            "complete_till": item["complete_till"],
            "entity_id": item.get("entity_id"),
            "entity_type": item.get("entity_type"),
            "task_type_id": item.get("task_type_id", 1),
            "responsible_user_id": item.get("responsible_user_id", user_id(request)),
            "is_completed": bool(item.get("is_completed", False)),
            "created_by": user_id(request),
            "created_at": state.now(),
        }
        state.data["tasks"].append(task)
        out.append(
            {
                "id": task["id"],
                "request_id": rid,
                "_links": {"self": {"href": f"{base(request)}/api/v4/tasks/{task['id']}"}},
            }
        )
    errors.raise_if_any()  # partial_bulk_saves: the valid tasks are saved, the answer is still 400
    return hal({"_links": {"self": {"href": base(request) + "/api/v4/tasks"}}, "_embedded": {"tasks": out}})


def _notes_page(request: Request, lead_id: int | None) -> Response:
    """The documented note filters: filter[id][] and filter[note_type][] (either also as a single
    value); the account-wide list documents no entity filter, so none is applied there."""
    state = sandbox(request).state
    query = request.query_params.multi_items()
    ids = {v for k, v in query if k in ("filter[id]", "filter[id][]")}
    types = {v for k, v in query if k in ("filter[note_type]", "filter[note_type][]")}
    notes = [
        n
        for n in state.data["notes"]
        if (lead_id is None or str(n.get("entity_id")) == str(lead_id))
        and (not ids or str(n.get("id")) in ids)
        and (not types or n.get("note_type") in types)
    ]
    return paged(request, notes, "notes")


@router.get("/api/v4/leads/notes")
async def list_notes(request: Request) -> Response:
    """Notes of all leads; 204 when none."""
    return _notes_page(request, None)


@router.get("/api/v4/leads/{lead_id:int}/notes")
async def list_lead_notes(request: Request, lead_id: int) -> Response:
    """Notes of one lead (Kommo "notes by entity id"); 204 when it has none. Whether the real API
    answers 404 or 204 for a lead that does not exist is not documented: 204 here."""
    return _notes_page(request, lead_id)


@router.post("/api/v4/leads/notes")
async def create_notes(request: Request) -> Response:
    state = sandbox(request).state
    items = await array_body(request)
    rids = request_ids(items)
    errors = Errors()
    for rid, item in zip(rids, items, strict=True):
        lead = state.leads.get(str(item.get("entity_id")))
        if lead is None or lead["is_deleted"]:
            errors.choice(rid, "entity_id")
        if item.get("note_type") not in NOTE_TYPES:
            errors.choice(rid, "note_type")
        params = item.get("params")
        if item.get("note_type") == "common" and (
            not isinstance(params, dict)
            or not isinstance(params.get("text"), str)
            or not params["text"].strip()
        ):
            errors.blank(rid, "params.text")
    _all_or_nothing(state, errors)
    out = []
    for rid, item in _valid(rids, items, errors):
        note = {
            "id": state.next_id("note"),
            "entity_id": item["entity_id"],
            "note_type": item["note_type"],
            "params": item.get("params"),
            "created_by": user_id(request),
            "created_at": state.now(),
        }
        state.data["notes"].append(note)
        out.append(
            {
                "id": note["id"],
                "entity_id": note["entity_id"],
                "request_id": rid,
                "_links": {"self": {"href": f"{base(request)}/api/v4/leads/notes/{note['id']}"}},
            }
        )
    errors.raise_if_any()  # partial_bulk_saves: the valid notes are saved, the answer is still 400
    return hal(
        {"_links": {"self": {"href": base(request) + "/api/v4/leads/notes"}}, "_embedded": {"notes": out}}
    )


def _all_or_nothing(state: SandboxState, errors: Errors) -> None:
    """A bulk create with invalid items saves nothing, unless the account runs in the
    partial_bulk_saves mode (config.py), where the valid items are saved before the same 400."""
    if not state.config.partial_bulk_saves:
        errors.raise_if_any()


def _valid(rids: list[str], items: list[dict[str, Any]], errors: Errors) -> list[tuple[str, dict[str, Any]]]:
    return [(rid, item) for rid, item in zip(rids, items, strict=True) if rid not in errors.by_item]


# --- webhooks -------------------------------------------------------------------------------------


def _hook_out(hook: dict[str, Any]) -> dict[str, Any]:
    return dict(hook)


@router.get("/api/v4/webhooks")
async def list_webhooks(request: Request) -> Response:
    state = sandbox(request).state
    wanted = request.query_params.get("filter[destination]")
    hooks = [h for h in state.data["webhooks"] if wanted is None or h["destination"] == wanted]
    if not hooks:
        return no_content()
    return hal({"_total_items": len(hooks), "_embedded": {"webhooks": [_hook_out(h) for h in hooks]}})


@router.post("/api/v4/webhooks")
async def subscribe(request: Request) -> Response:
    state = sandbox(request).state
    item = await json_body(request)
    errors = Errors()
    if not isinstance(item, dict):
        errors.type("0", "", "object")
        errors.raise_if_any()
    destination = item.get("destination")
    parts = urlsplit(destination) if isinstance(destination, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        errors.add("0", "destination", "InvalidUrl", "This value is not a valid URL.")
    settings = item.get("settings")
    if not isinstance(settings, list) or not settings:
        errors.blank("0", "settings")
    else:
        for i, code in enumerate(settings):
            if code not in WEBHOOK_EVENTS:
                errors.choice("0", f"settings.{i}")
    errors.raise_if_any()
    now = state.now()
    hook = next((h for h in state.data["webhooks"] if h["destination"] == destination), None)
    if hook is None:
        hook = {
            "id": state.next_id("webhook"),
            "destination": destination,
            "created_at": now,
            "created_by": user_id(request),
            "account_id": state.config.account_id,
        }
        state.data["webhooks"].append(hook)
    # Subscribing an existing destination again replaces its events and switches it back on.
    hook.update(
        {"updated_at": now, "sort": item.get("sort", 1), "disabled": False, "settings": list(settings)}
    )
    return hal(_hook_out(hook), status=201)


@router.delete("/api/v4/webhooks")
async def unsubscribe(request: Request) -> Response:
    state = sandbox(request).state
    item = await json_body(request)
    destination = item.get("destination") if isinstance(item, dict) else None
    if not isinstance(destination, str) or not destination:
        errors = Errors()
        errors.blank("0", "destination")
        errors.raise_if_any()
    hook = next((h for h in state.data["webhooks"] if h["destination"] == destination), None)
    if hook is None:
        return not_found("Webhook not found")
    state.data["webhooks"].remove(hook)
    sandbox(request).hooks.invalid.pop(hook["id"], None)
    return no_content()


# --- OAuth ----------------------------------------------------------------------------------------


def _jwt(state: SandboxState, expires_at: int) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {
        "aud": state.config.client_id,
        "jti": secrets.token_hex(16),
        "iat": state.now(),
        "exp": expires_at,
        "account_id": state.config.account_id,
        "api_domain": "api-b.amocrm.ru",
    }
    return f"{part({'typ': 'JWT', 'alg': 'RS256'})}.{part(claims)}.{secrets.token_urlsafe(32)}"


def issue_tokens(state: SandboxState) -> dict[str, Any]:
    cfg = state.config
    lifetime = cfg.access_token_lifetime / cfg.speed
    access = _jwt(state, state.now() + int(lifetime))
    refresh = "def50200" + secrets.token_hex(48)
    state.tokens().append(
        {
            "access_token": access,
            "refresh_token": refresh,
            "expires_at": state.clock() + cfg.access_token_lifetime,
            "user_id": 8_000_001,
        }
    )
    # expires_in is reported in real seconds so a client's own clock expires the token on time.
    return {
        "token_type": "Bearer",
        "expires_in": max(1, int(lifetime)),
        "server_time": state.now(),
        "access_token": access,
        "refresh_token": refresh,
    }


def new_auth_code(state: SandboxState) -> str:
    code = "def50200" + secrets.token_hex(64)
    state.data["codes"][code] = state.clock() + state.config.auth_code_lifetime
    return code


async def _oauth_params(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(raw.decode("utf-8", "replace")))
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@router.post("/oauth2/access_token")
async def access_token(request: Request) -> Response:
    state = sandbox(request).state
    cfg = state.config
    params = await _oauth_params(request)
    bad_request = ("Некорректный запрос", "В запросе отсутствует ряд параметров или параметры невалидны")
    if params.get("client_id") != cfg.client_id or params.get("client_secret") != cfg.client_secret:
        return oauth_problem(401, "Некорректный клиент", "Авторизация клиента не прошла")
    if params.get("redirect_uri") != cfg.redirect_uri:
        return oauth_problem(401, "Некорректный клиент", "Авторизация клиента не прошла")
    grant = params.get("grant_type")
    if grant == "authorization_code":
        expires = state.data["codes"].pop(str(params.get("code")), None)
        if expires is None:
            return oauth_problem(400, *bad_request, hint="Authorization code has been revoked")
        if expires <= state.clock():
            return oauth_problem(400, *bad_request, hint="Authorization code has expired")
        return hal(issue_tokens(state))
    if grant == "refresh_token":
        given = str(params.get("refresh_token"))
        record = next(
            (
                t
                for t in state.tokens()
                if t["refresh_token"] and secrets.compare_digest(t["refresh_token"], given)
            ),
            None,
        )
        if record is None:
            # Refresh tokens are single use: a reused (or unknown) one is refused with this body.
            return oauth_problem(401, *bad_request, hint="Token has been revoked")
        record["refresh_token"] = None
        return hal(issue_tokens(state))
    return oauth_problem(400, *bad_request, hint="The authorization grant type is not supported")
