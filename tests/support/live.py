"""FunnelSync served on a real port with a CRM sandbox posting its webhooks to it, a connection
stored and the typical funnel provisioned: the starting point of the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select

from app.funnels.models import Funnel, FunnelStage
from app.main import create_app
from funnel_templates.loader import library
from tests.funnels.conftest import Provisioner
from tests.support.crm import crm_sandbox, settings_for
from tests.support.db import open_sessions
from tests.support.notify import RequestCounter
from tests.support.server import bound_socket, serve_asgi

TYPICAL = library()["general.typical"]

L = TypeVar("L", bound="LiveFunnel")


@dataclass
class LiveFunnel:
    p: Provisioner
    hooks: RequestCounter  # counts the webhooks the CRM posted to our receiver
    stage_ids: dict[str, str]  # template stage code -> CRM stage id
    pipeline_id: str
    url: str  # FunnelSync's base URL

    @property
    def crm(self) -> str:
        return self.p.sandbox.crm

    @property
    def box(self) -> Any:
        return self.p.sandbox.box

    @classmethod
    def extend(cls: type[L], live: LiveFunnel, **extra: Any) -> L:
        """A harness built on this live funnel (test-specific fields in `extra`)."""
        return cls(**{f.name: getattr(live, f.name) for f in fields(LiveFunnel)}, **extra)


@asynccontextmanager
async def live_funnel(
    crm: str,
    database_url: str,
    tmp_path: Path,
    *,
    sandbox_options: dict[str, Any] | None = None,
    connection_settings: dict[str, Any] | None = None,
) -> AsyncIterator[LiveFunnel]:
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = settings_for(tmp_path, database_url).model_copy(update={"public_url": url})
    hooks = RequestCounter(create_app(settings))
    options = dict(sandbox_options or {})
    if crm == "bitrix24":  # its outgoing webhook, configured in the portal by hand
        options.setdefault("webhook_url", f"{url}/webhooks/bitrix24/{crm}")
    with serve_asgi(hooks, sock=sock), crm_sandbox(crm, **options) as sandbox:
        async with open_sessions(database_url) as sessions:
            record = sandbox.connection(settings, name=crm)
            record.settings = {**(record.settings or {}), **(connection_settings or {})}
            async with sessions.begin() as session:
                session.add(record)
            p = Provisioner(sandbox, sessions, settings, record)
            assert (await p.run(TYPICAL)).applied
            async with sessions() as session:
                funnel = await session.scalar(select(Funnel))
                assert funnel is not None and funnel.crm_pipeline_id
                rows = await session.scalars(select(FunnelStage).where(FunnelStage.funnel_id == funnel.id))
                stage_ids = {s.code: str(s.crm_stage_id) for s in rows if s.crm_stage_id}
            yield LiveFunnel(p, hooks, stage_ids, funnel.crm_pipeline_id, url)
