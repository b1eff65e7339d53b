"""What the sandbox's route modules share: the portal, its config and its outbound events."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from connectors.bitrix24.sandbox.api import Context
from connectors.bitrix24.sandbox.config import SandboxConfig
from connectors.bitrix24.sandbox.delivery import EventDelivery
from connectors.bitrix24.sandbox.engine import Auth, Portal


@dataclass
class Sandbox:
    config: SandboxConfig
    portal: Portal
    events: EventDelivery

    def public_url(self, request: Request) -> str:
        """The base URL clients reach the sandbox at; learnt from the first request when not given."""
        if not self.config.public_url:
            self.config.public_url = str(request.base_url).rstrip("/")
        return self.config.public_url

    def after_call(self, base: str) -> None:
        """After a REST call: send the events it raised and keep the state file current."""
        if self.portal.pending_events:
            self.events.flush(base)
        if self.portal.dirty and self.config.state_file:
            self.portal.state.save(self.config)  # `funnelsync demo` may be killed: keep the file current
            self.portal.dirty = False

    def ui_context(self, user_id: int | None = None) -> Context:
        """A person acting in the portal's UI (the config's UI user unless `user_id` is given)."""
        return self.portal.context(Auth("webhook", user_id or self.config.ui_user))

    def after_ui_change(self, request: Request, ctx: Context) -> None:
        if ctx.changed and self.config.state_file:
            self.portal.state.save(self.config)
        self.events.flush(self.public_url(request))


def sandbox(request: Request) -> Sandbox:
    box: Sandbox = request.app.state.sandbox
    return box
