"""REST paths of the Bitrix24 sandbox (inbound webhook and OAuth token auth) and the OAuth token
endpoint; injected faults answer here, before a method runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from connectors.bitrix24.sandbox.api import ApiError
from connectors.bitrix24.sandbox.common import sandbox
from connectors.bitrix24.sandbox.engine import Auth, Portal
from connectors.bitrix24.sandbox.querystring import parse_php_query

router = APIRouter()

_HTML = (
    "<html><head><title>{title}</title></head><body><h1>{title}</h1><hr><center>nginx</center></body></html>"
)
_JSON_FAULTS: dict[str, tuple[int, str, str]] = {
    "rate_limit": (503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
    "operation_limit": (429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit."),
    "http_500": (500, "INTERNAL_SERVER_ERROR", "Internal server error"),
    "expired_token": (401, "expired_token", "The access token provided has expired."),
    "invalid_token": (401, "invalid_token", "The access token provided is invalid."),
    "insufficient_scope": (
        403,
        "insufficient_scope",
        "The request requires higher privileges than provided by the webhook token",
    ),
    "overload": (503, "OVERLOAD_LIMIT", "REST API is blocked due to overload."),
    "portal_deleted": (500, "PORTAL_DELETED", "Portal was deleted"),
}
_HTML_FAULTS: dict[str, tuple[int, str]] = {
    "http_503": (503, "503 Service Temporarily Unavailable"),
    "html_500": (500, "500 Internal Server Error"),
    "html_502": (502, "502 Bad Gateway"),
    "blocked_403": (403, "403 Forbidden"),
    "html_200": (200, "Portal is under maintenance"),
}
FAULT_KINDS = sorted([*_JSON_FAULTS, *_HTML_FAULTS, "timeout"])

# Checks a call's credentials (its parameters carry an OAuth token) and tells who is calling.
Authenticate = Callable[[dict[str, Any]], Auth]


async def _params(request: Request) -> dict[str, Any]:
    params = parse_php_query(request.url.query)
    body = await request.body()
    if body:
        content_type = request.headers.get("content-type", "")
        if "form-urlencoded" in content_type:
            params.update(parse_php_query(body.decode("utf-8", "replace")))
        else:
            try:
                decoded = json.loads(body)
            except ValueError:
                raise ApiError(400, "INVALID_REQUEST", "Invalid JSON in request body") from None
            if isinstance(decoded, dict):
                params.update(decoded)
    return params


async def _injected_fault(portal: Portal, method: str) -> Response | None:
    """Play the next fault aimed at this call: an HTML page is returned, a JSON error raised as
    ApiError, a timeout waits its seconds and lets the call go on; None when there is none."""
    fault = portal.take_fault(method)
    if fault is None:
        return None
    if fault.kind == "timeout":
        await asyncio.sleep(fault.seconds)
    elif fault.kind in _HTML_FAULTS:
        status, title = _HTML_FAULTS[fault.kind]
        portal.stats.errors[f"html_{status}"] += 1
        return HTMLResponse(_HTML.format(title=title), status_code=status)
    elif fault.kind in _JSON_FAULTS:
        raise ApiError(*_JSON_FAULTS[fault.kind])
    return None


async def _handle(request: Request, method: str, authenticate: Authenticate) -> Response:
    box = sandbox(request)
    portal = box.portal
    method = method.lower().removesuffix(".json")
    base = box.public_url(request)
    portal.stats.requests += 1
    portal.stats.by_method[method] += 1
    portal.stats.changed()
    # Admission is decided before any await, at the moment the request reaches the handler, so
    # reading bodies of concurrent requests cannot reorder who entered the bucket first.
    admitted = portal.admit()
    try:
        fault_response = await _injected_fault(portal, method)
        if fault_response is not None:
            return fault_response
        params = await _params(request)
        if not admitted:
            raise ApiError(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
        auth = authenticate(params)
        params.pop("auth", None)
        body = portal.call(method, params, auth)
    except ApiError as exc:
        portal.stats.errors[exc.code or exc.description] += 1
        return JSONResponse(exc.body(), status_code=exc.status)
    finally:
        box.after_call(base)
    return JSONResponse(body)


@router.api_route("/rest/{user}/{code}/{method}", methods=["GET", "POST"])
async def webhook_call(user: str, code: str, method: str, request: Request) -> Response:
    portal = sandbox(request).portal
    return await _handle(request, method, lambda params: portal.check_webhook(user, code))


@router.api_route("/rest/{method}", methods=["GET", "POST"])
async def oauth_call(method: str, request: Request) -> Response:
    portal = sandbox(request).portal
    return await _handle(request, method, lambda params: portal.check_token(params.get("auth")))


@router.api_route("/oauth/token/", methods=["GET", "POST"])
async def oauth_token(request: Request) -> Response:
    box = sandbox(request)
    params = await _params(request)
    status, body = box.portal.refresh(params, box.public_url(request))
    return JSONResponse(body, status_code=status)
