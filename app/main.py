"""create_app(): the FastAPI application with its routers and lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__, metrics, migrate
from app.api.router import api_router
from app.bot.webhook import router as bot_router
from app.config import Settings, get_settings
from app.connections.health import crm_problem, failure_line
from app.connections.registry import ConnectorRegistry
from app.dashboard.auth import load_session
from app.dashboard.i18n import lang_of, translator
from app.dashboard.messages_pages import router as messages_pages_router
from app.dashboard.pages import router as dashboard_router
from app.dashboard.render import render
from app.db import create_engine, session_factory
from app.errors import NotFound
from app.messages.endpoints import public_router as opt_out_router
from app.messages.endpoints import router as messages_api_router
from app.scheduler import Runtime, build_scheduler, stop_scheduler
from app.security import api_token
from app.waker import NoWaker, Waker
from app.webhooks.intake import CountDeliveries, Intake
from app.webhooks.receivers import router as webhooks_router
from connectors.base import CRMError

log = logging.getLogger("funnelsync")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="FunnelSync",
        version=__version__,
        summary="Ready-made niche sales funnels for Bitrix24 and amoCRM, kept in sync and enforced.",
        lifespan=_lifespan(settings),
        # /docs is served below from the packaged Swagger UI (no CDN); ReDoc has no packaged copy.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.api_token = api_token(settings)
    # Webhook requests in flight, counted for the inbox job to give way to a burst (app.webhooks.intake).
    app.state.intake = Intake()
    app.add_middleware(CountDeliveries, intake=app.state.intake)
    app.add_exception_handler(NotFound, _not_found)  # type: ignore[arg-type]
    app.add_exception_handler(CRMError, _crm_failed)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _server_error)
    app.include_router(_health_router)
    app.include_router(_assets_router)
    app.include_router(api_router)
    app.include_router(webhooks_router)
    app.include_router(bot_router)
    app.include_router(dashboard_router)
    app.include_router(messages_api_router)
    app.include_router(opt_out_router)
    app.include_router(messages_pages_router)
    return app


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Open the database, the connectors and the scheduler for the app's life; close them after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.should_auto_migrate:
            # Alembic runs its own event loop for the async engine: keep it off ours.
            await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
        engine = create_engine(settings.resolved_database_url, settings.resolved_pool_size)
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.connectors = ConnectorRegistry(app.state.sessions, settings)
        app.state.scheduler = None
        waker: Waker = NoWaker()
        runtime = Runtime(app.state.sessions, settings, app.state.connectors, intake=app.state.intake)
        if settings.scheduler_enabled:
            app.state.scheduler = build_scheduler(runtime)
            app.state.scheduler.start()
            waker = runtime.waker
        app.state.waker = waker
        try:
            yield
        finally:
            if app.state.scheduler is not None:
                await stop_scheduler(app.state.scheduler, runtime)
            await runtime.close()
            await app.state.connectors.aclose()
            await engine.dispose()

    return lifespan


# --- errors: JSON problem details for API clients, a dashboard page for a browser ----------------


def _wants_html(request: Request) -> bool:
    """A browser navigating asks for text/html; API clients and scripts do not."""
    return "text/html" in request.headers.get("accept", "")


async def _error_page(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """The dashboard's error page, in the visitor's language, with the menu when logged in."""
    if status_code < status.HTTP_500_INTERNAL_SERVER_ERROR:
        await load_session(request)
    response = render(request, "error.html", {"message": message}, status_code=status_code)
    response.headers.update(headers or {})
    return response


async def _not_found(request: Request, exc: NotFound) -> Response:
    if _wants_html(request):
        return await _error_page(request, status.HTTP_404_NOT_FOUND, str(exc))
    return JSONResponse(status_code=404, content={"detail": str(exc)})


async def _crm_failed(request: Request, exc: CRMError) -> Response:
    # Any CRM failure an endpoint does not handle itself: the CRM's words as a 503 (transient,
    # with Retry-After when known) or 502 (refused), never a bare 500 with a traceback.
    log.warning("%s %s: %s", request.method, request.url.path, failure_line(exc))
    problem = crm_problem(exc)
    if _wants_html(request):
        return await _error_page(request, problem.status_code, str(problem.body["detail"]), problem.headers)
    return JSONResponse(status_code=problem.status_code, content=problem.body, headers=problem.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Unknown URLs (404), wrong methods (405) and every HTTPException an endpoint raises."""
    if exc.status_code < status.HTTP_400_BAD_REQUEST or not _wants_html(request):
        return await http_exception_handler(request, exc)
    # A structured detail (the template upload's problems) is for API clients: its message here.
    detail = exc.detail.get("message", "") if isinstance(exc.detail, dict) else exc.detail
    return await _error_page(request, exc.status_code, str(detail), dict(exc.headers or {}))


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """A path or query value of the wrong type (/funnels/abc): for a browser, which one."""
    if not _wants_html(request):
        return await request_validation_exception_handler(request, exc)
    t = translator(lang_of(request))
    first = exc.errors()[0] if exc.errors() else {}
    field = str((first.get("loc") or ("", ""))[-1])
    if first.get("type") == "missing":
        message = t("err_missing_value", field=field)
    else:
        message = t("err_invalid_value", field=field, value=repr(first.get("input")))
    return await _error_page(request, status.HTTP_422_UNPROCESSABLE_CONTENT, message)


async def _server_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback and re-raises after this answer; the visitor sees no internals.
    if _wants_html(request):
        message = translator(lang_of(request))("err_server_text")
        return await _error_page(request, status.HTTP_500_INTERNAL_SERVER_ERROR, message)
    return PlainTextResponse("Internal Server Error", status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


# --- docs and favicon, from the package (nothing from a CDN) -------------------------------------

_assets_router = APIRouter(include_in_schema=False)

# The swagger-ui-py package ships Swagger UI's dist files (a wheel installs them as plain files).
SWAGGER_UI_DIR = Path(str(files("swagger_ui").joinpath("static")))
SWAGGER_UI_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
FAVICON = (Path(__file__).resolve().parent / "dashboard" / "static" / "favicon.svg").read_bytes()
ASSET_CACHE = {"Cache-Control": "public, max-age=86400"}


@_assets_router.get("/docs")
async def swagger_docs(request: Request) -> HTMLResponse:
    """FastAPI's Swagger UI page with its script and style from the swagger-ui-py package."""
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url="/static/docs/swagger-ui-bundle.js",
        swagger_css_url="/static/docs/swagger-ui.css",
        swagger_favicon_url="/favicon.svg",
        oauth2_redirect_url="/docs/oauth2-redirect",
    )


@_assets_router.get("/docs/oauth2-redirect")
async def swagger_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@_assets_router.get("/static/docs/{name}")
async def swagger_asset(name: str) -> FileResponse:
    # A fixed allow-list: no path from the URL ever reaches the file system.
    if name not in SWAGGER_UI_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    return FileResponse(SWAGGER_UI_DIR / name, media_type=SWAGGER_UI_FILES[name], headers=ASSET_CACHE)


@_assets_router.get("/favicon.svg")
@_assets_router.get("/favicon.ico")  # what browsers ask for on pages without a <link rel="icon">
async def favicon() -> Response:
    return Response(FAVICON, media_type="image/svg+xml", headers=ASSET_CACHE)


_health_router = APIRouter(tags=["health"])


@_health_router.get("/healthz")
async def healthz(request: Request) -> dict[str, str]:
    """Liveness plus a database round trip, for load balancers and the Docker HEALTHCHECK."""
    async with request.app.state.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__}


@_health_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition: counters and queue depths (no secrets, so no token needed)."""
    body, content_type = await metrics.render(request.app.state.sessions)
    return Response(body, media_type=content_type)
