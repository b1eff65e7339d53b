"""The sandbox FastAPI app and its uvicorn runner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from connectors.amocrm.sandbox import (
    api_contacts,
    api_leads,
    api_misc,
    api_pipelines,
    api_users,
    control,
    rename,
)
from connectors.amocrm.sandbox.common import Sandbox
from connectors.amocrm.sandbox.config import SandboxConfig
from connectors.amocrm.sandbox.errors import ValidationFailed, not_found, problem
from connectors.amocrm.sandbox.guard import Guard, GuardMiddleware
from connectors.amocrm.sandbox.hooks import WebhookDispatcher
from connectors.amocrm.sandbox.state import SandboxState


def create_sandbox_app(config: SandboxConfig | None = None) -> FastAPI:
    config = config or SandboxConfig()
    state = SandboxState(config)
    box = Sandbox(state=state, guard=Guard(state), hooks=WebhookDispatcher(state))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await box.hooks.start()
        try:
            yield
        finally:
            await box.hooks.stop()
            state.save()

    app = FastAPI(
        title=f"amoCRM sandbox ({config.subdomain})",
        lifespan=lifespan,
        docs_url="/_sandbox/docs",
        openapi_url="/_sandbox/openapi.json",
        redoc_url=None,
    )
    app.state.sandbox = box
    app.add_middleware(GuardMiddleware, guard=box.guard)

    @app.exception_handler(ValidationFailed)
    async def _validation(request: Request, exc: ValidationFailed) -> Response:
        return exc.response()

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> Response:
        return not_found()

    @app.exception_handler(405)
    async def _bad_method(request: Request, exc: Exception) -> Response:
        return problem(405, "Method Not Allowed", "Method not allowed")

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(request: Request, exc: Exception) -> Response:
        return problem(400, "Bad Request", "Request validation failed")

    for module in (api_pipelines, api_leads, api_contacts, api_misc, api_users, control):
        app.include_router(module.router)
    rename.install(app, box)  # a renamed account
    return app


def run_sandbox(port: int, **options: Any) -> None:
    """Serve a sandbox account on 127.0.0.1:`port` (options are SandboxConfig fields)."""
    import uvicorn

    host = str(options.pop("host", "127.0.0.1"))
    config = SandboxConfig(**options)
    app = create_sandbox_app(config)
    url = f"http://{host}:{port}"
    print(f"amoCRM sandbox for account {config.subdomain!r} (id {config.account_id}) at {url}")
    if config.token:
        print(f"  long-lived token: {config.token}")
    print(f"  OAuth: client_id={config.client_id} redirect_uri={config.redirect_uri}")
    print(f"  get an authorization code: POST {url}/_sandbox/oauth/code ; stats: GET {url}/_sandbox/stats")
    uvicorn.run(app, host=host, port=port, log_level="warning")
