"""What a sandbox method handler gets and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.bitrix24.sandbox.config import SandboxConfig
from connectors.bitrix24.sandbox.state import PortalClock, PortalState


class ApiError(Exception):
    """An error response: HTTP status plus Bitrix24's `{"error", "error_description"}` body."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(f"{status} {code}: {description}")
        self.status = status
        self.code = code
        self.description = description

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "error_description": self.description}


@dataclass
class Result:
    value: Any
    total: int | None = None
    next: int | None = None


EventSink = Callable[[str, dict[str, Any]], None]


@dataclass
class Context:
    state: PortalState
    config: SandboxConfig
    clock: PortalClock
    emit: EventSink  # (event name, data[FIELDS]) -> queued for delivery
    user_id: int = 1
    auth_kind: str = "webhook"  # or "oauth"
    access_token: str | None = None
    changed: list[bool] = field(default_factory=list)

    def touch(self) -> None:
        self.changed.append(True)


def bad(description: str, code: str = "", status: int = 400) -> ApiError:
    """Most CRM errors come with an empty `error` and only `error_description` (docs/crm/bitrix24.md §6)."""
    return ApiError(status, code, description)
