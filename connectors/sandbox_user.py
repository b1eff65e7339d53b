"""A person clicking around a sandbox CRM: create, move and lose deals through the sandboxes'
user-action endpoints (which post webhooks as the real CRM would). Used by `funnelsync demo` and
tests; the control endpoints are the sandboxes' own, so their shapes live here, beside them."""

from __future__ import annotations

from typing import Any, Protocol

import httpx


class SandboxUser(Protocol):
    async def create_deal(self, title: str, pipeline_id: str, stage_id: str, amount: int = 0) -> str: ...

    async def move_deal(
        self, deal_id: str, pipeline_id: str, stage_id: str, fields: dict[str, Any] | None = None
    ) -> None: ...

    async def aclose(self) -> None: ...


class Bitrix24SandboxUser:
    def __init__(self, base_url: str) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=30)

    async def create_deal(self, title: str, pipeline_id: str, stage_id: str, amount: int = 0) -> str:
        fields = {
            "TITLE": title,
            "CATEGORY_ID": int(pipeline_id),
            "STAGE_ID": stage_id,
            "OPPORTUNITY": amount,
        }
        response = await self._http.post("/_sandbox/deals", json={"fields": fields})
        response.raise_for_status()
        return str(response.json()["ID"])

    async def move_deal(
        self, deal_id: str, pipeline_id: str, stage_id: str, fields: dict[str, Any] | None = None
    ) -> None:
        body = {"fields": {"STAGE_ID": stage_id, **(fields or {})}}
        (await self._http.post(f"/_sandbox/deals/{deal_id}", json=body)).raise_for_status()

    async def aclose(self) -> None:
        await self._http.aclose()


class AmoCRMSandboxUser:
    def __init__(self, base_url: str) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=30)

    async def create_deal(self, title: str, pipeline_id: str, stage_id: str, amount: int = 0) -> str:
        body = {"name": title, "pipeline_id": int(pipeline_id), "status_id": int(stage_id), "price": amount}
        response = await self._http.post("/_sandbox/deals", json=body)
        response.raise_for_status()
        return str(response.json()["id"])

    async def move_deal(
        self, deal_id: str, pipeline_id: str, stage_id: str, fields: dict[str, Any] | None = None
    ) -> None:
        body = {"status_id": int(stage_id), "pipeline_id": int(pipeline_id), **(fields or {})}
        (await self._http.post(f"/_sandbox/deals/{deal_id}/move", json=body)).raise_for_status()

    async def aclose(self) -> None:
        await self._http.aclose()


def sandbox_user(crm: str, base_url: str) -> SandboxUser:
    return Bitrix24SandboxUser(base_url) if crm == "bitrix24" else AmoCRMSandboxUser(base_url)
