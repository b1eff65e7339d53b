"""A CRM sandbox as `funnelsync demo` drives it: start it, connect FunnelSync to it, and act as a
person clicking around in it (the sandboxes' user-action endpoints post webhooks as the real CRM
would). Each CRM's sandbox package has one SandboxKit, named by its descriptor's `sandbox`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from starlette.types import ASGIApp

from connectors.base import CRMConnector

# How a person records a lost deal: the fields to send with the move, with a loss reason or without.
LossFields = Callable[[bool], dict[str, Any]]


@dataclass(frozen=True)
class SandboxAccount:
    """One sandbox account the demo runs on 127.0.0.1 and connects a FunnelSync connection to."""

    connection: str  # the FunnelSync connection's name
    port: int
    # Where our receiver takes this connection's webhooks, and the token its bodies carry (for a CRM
    # whose events carry one), for a sandbox that is told at start rather than through its API.
    webhook_url: str
    webhook_token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class SandboxUser(Protocol):
    async def create_deal(
        self,
        title: str,
        pipeline_id: str,
        stage_id: str,
        amount: int = 0,
        fields: Mapping[str, datetime | str] | None = None,
    ) -> str:
        """A new deal; `fields`: custom fields to fill (dates or text), by how deal snapshots name them
        (FunnelMapping.crm_name, else crm_id)."""
        ...

    async def add_contact(self, deal_id: str, name: str, phone: str, email: str) -> str:
        """A client with a phone and an email, made the deal's main contact; its CRM id."""
        ...

    async def move_deal(
        self, deal_id: str, pipeline_id: str, stage_id: str, fields: dict[str, Any] | None = None
    ) -> None: ...

    async def aclose(self) -> None: ...


class SandboxKit(Protocol):
    def create_app(self, account: SandboxAccount) -> ASGIApp:
        """The sandbox's ASGI app for this account."""
        ...

    def connection_input(self, account: SandboxAccount) -> dict[str, Any]:
        """The connection input (as the API takes it, without `name`) that connects to the account."""
        ...

    def user(self, account: SandboxAccount) -> SandboxUser: ...

    async def loss_fields(self, connector: CRMConnector, loss_reason_ids: list[str]) -> LossFields:
        """How a person records a loss reason in this CRM; `loss_reason_ids` are the CRM ids of the
        funnel's provisioned loss reasons."""
        ...
