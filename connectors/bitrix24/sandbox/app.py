"""FastAPI app of the Bitrix24 sandbox: REST paths and the OAuth token endpoint (rest.py), control
endpoints (control.py, rename.py, scenario.py) and the outbound event delivery (delivery.py:
form-encoded POSTs, never retried, like the real queue server)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from connectors.bitrix24.sandbox import control, rename, rest, scenario
from connectors.bitrix24.sandbox.common import Sandbox
from connectors.bitrix24.sandbox.config import SandboxConfig
from connectors.bitrix24.sandbox.delivery import EventDelivery
from connectors.bitrix24.sandbox.engine import Portal

log = logging.getLogger("funnelsync.sandbox.bitrix24")

FAULT_KINDS = rest.FAULT_KINDS


def create_sandbox_app(config: SandboxConfig | None = None) -> FastAPI:
    config = config or SandboxConfig()
    portal = Portal(config)
    box = Sandbox(config, portal, EventDelivery(config, portal))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        box.events.open()
        try:
            yield
        finally:
            await box.events.close()
            portal.state.save(config)

    app = FastAPI(title="Bitrix24 sandbox", lifespan=lifespan)
    app.state.portal = portal
    app.state.sandbox = box
    app.include_router(rest.router)
    app.include_router(control.router)
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
