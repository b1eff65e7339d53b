"""The Bitrix24 sandbox as the demo drives it (connectors/sandbox_support/kit.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
from starlette.types import ASGIApp

from connectors.base import CRMConnector
from connectors.bitrix24.sandbox import SandboxConfig, create_sandbox_app
from connectors.http import tls_context
from connectors.sandbox_support.kit import LossFields, SandboxAccount

WEBHOOK_CODE = "demowebhookcode"


class Bitrix24SandboxUser:
    def __init__(self, base_url: str) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=30, verify=tls_context())

    async def create_deal(
        self,
        title: str,
        pipeline_id: str,
        stage_id: str,
        amount: int = 0,
        fields: Mapping[str, datetime | str] | None = None,
    ) -> str:
        body = {
            "TITLE": title,
            "CATEGORY_ID": int(pipeline_id),
            "STAGE_ID": stage_id,
            "OPPORTUNITY": amount,
            # A datetime user field takes an ISO 8601 string, as connectors/bitrix24/mapping.py reads it.
            **{
                name: value.isoformat() if isinstance(value, datetime) else value
                for name, value in (fields or {}).items()
            },
        }
        response = await self._http.post("/_sandbox/deals", json={"fields": body})
        response.raise_for_status()
        return str(response.json()["ID"])

    async def add_contact(self, deal_id: str, name: str, phone: str, email: str) -> str:
        fields = {
            "NAME": name,
            "PHONE": [{"VALUE": phone, "VALUE_TYPE": "MOBILE"}],
            "EMAIL": [{"VALUE": email, "VALUE_TYPE": "WORK"}],
        }
        body = {"fields": fields, "deal_id": int(deal_id), "primary": True}
        response = await self._http.post("/_sandbox/contacts", json=body)
        response.raise_for_status()
        return str(response.json()["ID"])

    async def move_deal(
        self, deal_id: str, pipeline_id: str, stage_id: str, fields: dict[str, Any] | None = None
    ) -> None:
        body = {"fields": {"STAGE_ID": stage_id, **(fields or {})}}
        (await self._http.post(f"/_sandbox/deals/{deal_id}", json=body)).raise_for_status()

    async def aclose(self) -> None:
        await self._http.aclose()


class Bitrix24Kit:
    def create_app(self, account: SandboxAccount) -> ASGIApp:
        # The portal's outgoing webhook is set up in its UI, so the sandbox is told at start.
        config = SandboxConfig(
            webhook_code=WEBHOOK_CODE,
            webhook_url=account.webhook_url,
            app_token=account.webhook_token,
            domain=f"127.0.0.1:{account.port}",
            public_url=account.url,
        )
        return create_sandbox_app(config)

    def connection_input(self, account: SandboxAccount) -> dict[str, Any]:
        return {
            "crm": "bitrix24",
            "webhook_url": f"{account.url}/rest/1/{WEBHOOK_CODE}/",
            "app_token": account.webhook_token,
        }

    def user(self, account: SandboxAccount) -> Bitrix24SandboxUser:
        return Bitrix24SandboxUser(account.url)

    async def loss_fields(self, connector: CRMConnector, loss_reason_ids: list[str]) -> LossFields:
        # A Bitrix24 loss reason is a value of the enumeration field provisioning created.
        field = next(f for f in await connector.list_fields() if f.code == "loss_reason")
        options = [o.id for o in field.options]
        return lambda with_reason: {field.crm_name: options[0]} if with_reason and options else {}


KIT = Bitrix24Kit()
