"""The amoCRM sandbox as the demo drives it (connectors/sandbox_support/kit.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
from starlette.types import ASGIApp

from connectors.amocrm.sandbox import SandboxConfig, create_sandbox_app
from connectors.base import CRMConnector
from connectors.http import tls_context
from connectors.sandbox_support.kit import LossFields, SandboxAccount

SUBDOMAIN = "demo"
TOKEN = "demo-long-lived-token"


class AmoCRMSandboxUser:
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
        body: dict[str, Any] = {
            "name": title,
            "pipeline_id": int(pipeline_id),
            "status_id": int(stage_id),
            "price": amount,
        }
        if fields:
            # A date_time field holds a Unix timestamp, as connectors/amocrm/mapping.py writes it.
            body["custom_fields_values"] = [
                {
                    # Deal snapshots name a field by its code when it has one, else by its id.
                    **({"field_id": int(field_id)} if field_id.isdigit() else {"field_code": field_id}),
                    "values": [{"value": int(value.timestamp()) if isinstance(value, datetime) else value}],
                }
                for field_id, value in fields.items()
            ]
        response = await self._http.post("/_sandbox/deals", json=body)
        response.raise_for_status()
        return str(response.json()["id"])

    async def add_contact(self, deal_id: str, name: str, phone: str, email: str) -> str:
        body = {
            "name": name,
            "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": phone, "enum_code": "MOB"}]},
                {"field_code": "EMAIL", "values": [{"value": email, "enum_code": "WORK"}]},
            ],
            "lead_id": int(deal_id),
            "is_main": True,
        }
        response = await self._http.post("/_sandbox/contacts", json=body)
        response.raise_for_status()
        return str(response.json()["id"])

    async def move_deal(
        self, deal_id: str, pipeline_id: str, stage_id: str, fields: dict[str, Any] | None = None
    ) -> None:
        body = {"status_id": int(stage_id), "pipeline_id": int(pipeline_id), **(fields or {})}
        (await self._http.post(f"/_sandbox/deals/{deal_id}/move", json=body)).raise_for_status()

    async def aclose(self) -> None:
        await self._http.aclose()


class AmoCRMKit:
    def create_app(self, account: SandboxAccount) -> ASGIApp:
        # Provisioning registers our webhook through the API: the sandbox needs no URL at start.
        return create_sandbox_app(SandboxConfig(subdomain=SUBDOMAIN, token=TOKEN))

    def connection_input(self, account: SandboxAccount) -> dict[str, Any]:
        return {"crm": "amocrm", "subdomain": SUBDOMAIN, "token": TOKEN, "base_url": account.url}

    def user(self, account: SandboxAccount) -> AmoCRMSandboxUser:
        return AmoCRMSandboxUser(account.url)

    async def loss_fields(self, connector: CRMConnector, loss_reason_ids: list[str]) -> LossFields:
        # An amoCRM loss reason is an account-level list entry, sent as the deal's loss_reason_id.
        ids = list(loss_reason_ids)
        return lambda with_reason: {"loss_reason_id": int(ids[0])} if with_reason and ids else {}


KIT = AmoCRMKit()
