"""FastAPI app of the Bitrix24 sandbox: REST paths, OAuth token endpoint, control endpoints, and the
outbound event delivery (form-encoded POSTs, never retried, like the real queue server)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from connectors.bitrix24.sandbox import deals, rename, scenario
from connectors.bitrix24.sandbox.api import ApiError
from connectors.bitrix24.sandbox.config import SandboxConfig
from connectors.bitrix24.sandbox.engine import Auth, Fault, Portal
from connectors.bitrix24.sandbox.querystring import parse_php_query

log = logging.getLogger("funnelsync.sandbox.bitrix24")

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


def create_sandbox_app(config: SandboxConfig | None = None) -> FastAPI:
    config = config or SandboxConfig()
    portal = Portal(config)
    tasks: set[asyncio.Task[None]] = set()
    deliveries: list[dict[str, Any]] = []
    drop_counter = {"deliveries": 0}  # counted for config.webhook_drop_percent since it was set
    holder: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder["client"] = httpx.AsyncClient(timeout=10.0)
        try:
            yield
        finally:
            for task in list(tasks):
                task.cancel()
            await holder["client"].aclose()
            portal.state.save(config)

    app = FastAPI(title="Bitrix24 sandbox", lifespan=lifespan)
    app.state.portal = portal

    def public_url(request: Request) -> str:
        if not config.public_url:
            config.public_url = str(request.base_url).rstrip("/")
        return config.public_url

    # --- outbound events ---------------------------------------------------------------------------

    def event_bodies(event: str, data: dict[str, Any], base: str) -> list[tuple[str, str]]:
        ts = str(int(time.time()))
        fields = [(f"data[FIELDS][{k}]", str(v)) for k, v in data.items()]
        auth_common = [
            ("auth[domain]", config.domain),
            ("auth[client_endpoint]", f"{base}/rest/"),
            ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
            ("auth[member_id]", config.member_id),
        ]
        out: list[tuple[str, str]] = []
        for bound in portal.state.handlers:
            if bound["event"] != event:
                continue
            token = next(iter(t for t, exp in portal.tokens.items() if exp > time.time()), "")
            # An application's event also carries a token of the user the handler was bound for
            # (DOCS api-reference/events/index.md; docs/crm/bitrix24.md §4).
            app_auth = [
                ("auth[access_token]", token),
                ("auth[expires]", str(int(time.time()) + 3600)),
                ("auth[expires_in]", "3600"),
                ("auth[scope]", ",".join(config.scopes)),
                *auth_common,
                ("auth[status]", "L"),
                ("auth[user_id]", str(config.webhook_user)),
                ("auth[application_token]", config.app_token),
            ]
            pairs = [("event", event), ("event_handler_id", str(bound["id"])), *fields, ("ts", ts), *app_auth]
            out.append((bound["handler"], urlencode(pairs)))
        # The outgoing webhook configured in the UI cannot subscribe to ONCRMDEALMOVETOCATEGORY
        # (app only, DOCS crm/deals/events). Its body matches the real capture in docs/crm/bitrix24.md §4.
        if config.webhook_url and event in config.webhook_events and event != "ONCRMDEALMOVETOCATEGORY":
            pairs = [
                ("event", event),
                *fields,
                ("ts", ts),
                *auth_common,
                ("auth[application_token]", config.app_token),
            ]
            out.append((config.webhook_url, urlencode(pairs)))
        return out

    async def deliver(url: str, body: str) -> None:
        record: dict[str, Any] = {"url": url, "body": body, "status": None}
        deliveries.append(record)
        try:
            response = await holder["client"].post(
                url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
            )
            record["status"] = response.status_code
            if response.is_success:
                portal.stats.webhooks_sent += 1
            else:
                portal.stats.webhooks_failed += 1
        except httpx.HTTPError as exc:  # lost, like the real queue server: no retries
            record["status"] = repr(exc)
            portal.stats.webhooks_failed += 1

    def lost_on_the_way() -> bool:
        """Whether the next delivery is lost (config.webhook_drop_percent of them, spread evenly:
        decided here, in event order, so a test knows which ones)."""
        percent, seen = config.webhook_drop_percent, drop_counter["deliveries"]
        drop_counter["deliveries"] += 1
        return (seen + 1) * percent // 100 > seen * percent // 100

    def flush_events(base: str) -> None:
        pending, portal.pending_events = portal.pending_events, []
        for event, data in pending:
            for url, body in event_bodies(event, data, base):
                if lost_on_the_way():
                    # The queue server logs a failed delivery and never resends it (no retries).
                    deliveries.append({"url": url, "body": body, "status": "dropped"})
                    portal.stats.webhooks_failed += 1
                    continue
                task = asyncio.get_running_loop().create_task(deliver(url, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    # --- REST --------------------------------------------------------------------------------------

    async def handle(request: Request, method: str, auth_of: Any) -> Response:
        method = method.lower().removesuffix(".json")
        base = public_url(request)
        portal.stats.requests += 1
        portal.stats.by_method[method] += 1
        # Admission is decided before any await, at the moment the request reaches the handler, so
        # reading bodies of concurrent requests cannot reorder who entered the bucket first.
        admitted = portal.admit()
        try:
            fault = portal.take_fault(method)
            if fault is not None:
                if fault.kind == "timeout":
                    await asyncio.sleep(fault.seconds)
                elif fault.kind in _HTML_FAULTS:
                    status, title = _HTML_FAULTS[fault.kind]
                    portal.stats.errors[f"html_{status}"] += 1
                    return HTMLResponse(_HTML.format(title=title), status_code=status)
                elif fault.kind in _JSON_FAULTS:
                    raise ApiError(*_JSON_FAULTS[fault.kind])
            params = await _params(request)
            if not admitted:
                raise ApiError(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
            auth: Auth = auth_of(params)
            params.pop("auth", None)
            body = portal.call(method, params, auth)
        except ApiError as exc:
            portal.stats.errors[exc.code or exc.description] += 1
            return JSONResponse(exc.body(), status_code=exc.status)
        finally:
            if portal.pending_events:
                flush_events(base)
            if portal.dirty and config.state_file:
                portal.state.save(config)  # `funnelsync demo` may be killed: keep the file current
                portal.dirty = False
        return JSONResponse(body)

    @app.api_route("/rest/{user}/{code}/{method}", methods=["GET", "POST"])
    async def webhook_call(user: str, code: str, method: str, request: Request) -> Response:
        return await handle(request, method, lambda params: portal.check_webhook(user, code))

    @app.api_route("/rest/{method}", methods=["GET", "POST"])
    async def oauth_call(method: str, request: Request) -> Response:
        return await handle(request, method, lambda params: portal.check_token(params.get("auth")))

    @app.api_route("/oauth/token/", methods=["GET", "POST"])
    async def oauth_token(request: Request) -> Response:
        params = await _params(request)
        status, body = portal.refresh(params, public_url(request))
        return JSONResponse(body, status_code=status)

    # --- control -----------------------------------------------------------------------------------

    @app.get("/_sandbox/stats")
    async def stats() -> dict[str, Any]:
        return portal.stats.as_json()

    @app.post("/_sandbox/stats/reset")
    async def reset_stats() -> dict[str, Any]:
        from connectors.bitrix24.sandbox.engine import Stats

        portal.stats = Stats()
        return {"ok": True}

    @app.post("/_sandbox/faults")
    async def add_fault(request: Request) -> Response:
        spec = await request.json()
        kind = str(spec.get("kind", ""))
        if kind not in FAULT_KINDS:
            return JSONResponse(
                {"error": f"unknown fault kind {kind!r}", "kinds": FAULT_KINDS}, status_code=400
            )
        portal.faults.append(
            Fault(
                kind,
                int(spec.get("count", 1)),
                spec.get("method"),
                float(spec.get("seconds", 5.0)),
                after=int(spec.get("after", 0)),
            )
        )
        return JSONResponse({"ok": True})

    @app.delete("/_sandbox/faults")
    async def clear_faults() -> dict[str, Any]:
        portal.faults.clear()
        return {"ok": True}

    @app.post("/_sandbox/oauth/expire")
    async def expire_tokens() -> dict[str, Any]:
        portal.expire_tokens()
        return {"ok": True}

    @app.get("/_sandbox/oauth")
    async def oauth_state() -> dict[str, Any]:
        return {
            "refresh_token": portal.refresh_token,
            "refreshes": portal.stats.token_refreshes,
            "token_uses": dict(portal.stats.token_uses),
        }

    @app.post("/_sandbox/config")
    async def change_config(request: Request) -> Response:
        spec = await request.json()
        drop = spec.get("webhook_drop_percent")
        if "webhook_drop_percent" in spec and (
            not isinstance(drop, int) or isinstance(drop, bool) or not 0 <= drop <= 100
        ):  # checked before anything changes: a bad request leaves the config as it was
            return JSONResponse(
                {"error": f"webhook_drop_percent must be an integer 0..100, not {drop!r}"}, status_code=400
            )
        if "scopes" in spec:
            config.scopes = tuple(spec["scopes"])
        if "operating_cost" in spec:
            config.operating_cost = {str(k): float(v) for k, v in spec["operating_cost"].items()}
        if "webhook_url" in spec:
            config.webhook_url = spec["webhook_url"]
        if "webhook_drop_percent" in spec:
            config.webhook_drop_percent = drop
            drop_counter["deliveries"] = 0  # the pattern starts with the next delivery
        return JSONResponse({"ok": True})

    def ui(request: Request, user_id: int | None = None) -> Any:
        return portal.context(Auth("webhook", user_id or config.ui_user))

    def ui_done(request: Request, ctx: Any) -> None:
        if ctx.changed and config.state_file:
            portal.state.save(config)
        flush_events(public_url(request))

    @app.post("/_sandbox/deals")
    async def sim_create(request: Request) -> Response:
        spec = await request.json()
        ctx = ui(request, spec.get("user_id"))
        deal = deals.create_deal(ctx, spec.get("fields", {}), by_user=ctx.user_id)
        ui_done(request, ctx)
        return JSONResponse({"ID": deal["ID"]})

    @app.post("/_sandbox/deals/bulk")
    async def sim_bulk(request: Request) -> Response:
        spec = await request.json()
        ctx = ui(request)
        ids = deals.seed_deals(
            ctx, int(spec.get("count", 1)), int(spec.get("category_id", 0)), spec.get("title", "Deal")
        )
        return JSONResponse(
            {"count": len(ids), "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}
        )

    @app.post("/_sandbox/deals/{deal_id}")
    async def sim_update(deal_id: int, request: Request) -> Response:
        spec = await request.json()
        ctx = ui(request, spec.get("user_id"))
        deal = portal.state.deals.get(deal_id)
        if deal is None:
            return JSONResponse({"error": "NOT_FOUND"}, status_code=404)
        try:
            deals.change_deal(ctx, deal, spec.get("fields", {}), by_user=ctx.user_id, allow_category=True)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        ui_done(request, ctx)
        return JSONResponse({"ok": True})

    @app.delete("/_sandbox/deals/{deal_id}")
    async def sim_delete(deal_id: int, request: Request) -> Response:
        ctx = ui(request)
        try:
            deals.remove_deal(ctx, deal_id)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=404)
        ui_done(request, ctx)
        return JSONResponse({"ok": True})

    @app.get("/_sandbox/webhooks")
    async def webhook_log() -> list[dict[str, Any]]:
        return deliveries

    @app.get("/_sandbox/state")
    async def dump_state() -> dict[str, Any]:
        return portal.state.to_json()

    @app.post("/_sandbox/save")
    async def save_state() -> dict[str, Any]:
        portal.state.save(config)
        return {"ok": True, "file": config.state_file}

    rename.install(app, portal, config)  # a renamed portal, a moved OAuth server
    scenario.install(app, portal, config)  # per-deal rights, mid-call changes, clock, revoked webhook
    return app


def run_sandbox(port: int, **options: Any) -> None:
    """Serve the sandbox with uvicorn (`funnelsync sandbox bitrix24`)."""
    import uvicorn

    host = str(options.pop("host", "127.0.0.1"))
    config = SandboxConfig(**options)
    config.public_url = config.public_url or f"http://{host}:{port}"
    base = config.public_url
    print(f"Bitrix24 sandbox on {base}")
    print(f"  inbound webhook URL : {base}/rest/{config.webhook_user}/{config.webhook_code}/")
    print(f"  OAuth client_endpoint: {base}/rest/  (token server: {base}/oauth/token/)")
    print(f"  OAuth client_id={config.client_id} client_secret={config.client_secret}")
    print(f"  access_token={config.access_token} refresh_token={config.refresh_token}")
    print(f"  control: {base}/_sandbox/stats, /_sandbox/faults, /_sandbox/deals, /_sandbox/webhooks")
    uvicorn.run(create_sandbox_app(config), host=host, port=port, log_level="info")
