"""create_app(): the FastAPI application with its routers and lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from app import __version__, metrics, migrate
from app.api.router import api_router
from app.config import Settings, get_settings
from app.connections.health import crm_problem, failure_line
from app.connections.registry import ConnectorRegistry
from app.dashboard.pages import router as dashboard_router
from app.db import create_engine, session_factory
from app.errors import NotFound
from app.scheduler import Runtime, SchedulerWaker, build_scheduler
from app.security import api_token
from app.waker import NoWaker, Waker
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
    )
    app.state.settings = settings
    app.state.api_token = api_token(settings)
    app.add_exception_handler(NotFound, _not_found)  # type: ignore[arg-type]
    app.add_exception_handler(CRMError, _crm_failed)  # type: ignore[arg-type]
    app.include_router(_health_router)
    app.include_router(api_router)
    app.include_router(webhooks_router)
    app.include_router(dashboard_router)
    return app


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Open the database, the connectors and the scheduler for the app's life; close them after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.should_auto_migrate:
            # Alembic runs its own event loop for the async engine: keep it off ours.
            await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
        engine = create_engine(settings.resolved_database_url)
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.connectors = ConnectorRegistry(app.state.sessions, settings)
        app.state.scheduler = None
        waker: Waker = NoWaker()
        if settings.scheduler_enabled:
            runtime = Runtime(app.state.sessions, settings, app.state.connectors)
            app.state.scheduler = build_scheduler(runtime)
            app.state.scheduler.start()
            waker = SchedulerWaker(app.state.scheduler)
        app.state.waker = waker
        try:
            yield
        finally:
            if app.state.scheduler is not None:
                app.state.scheduler.shutdown(wait=False)
            await app.state.connectors.aclose()
            await engine.dispose()

    return lifespan


async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(exc)})


async def _crm_failed(request: Request, exc: CRMError) -> JSONResponse:
    # Any CRM failure an endpoint does not handle itself: the CRM's words as a 503 (transient,
    # with Retry-After when known) or 502 (refused), never a bare 500 with a traceback.
    log.warning("%s %s: %s", request.method, request.url.path, failure_line(exc))
    problem = crm_problem(exc)
    return JSONResponse(status_code=problem.status_code, content=problem.body, headers=problem.headers)


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
