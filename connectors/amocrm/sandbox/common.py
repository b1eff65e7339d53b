"""Helpers shared by the sandbox's route modules."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request

from connectors.amocrm.sandbox.errors import ValidationFailed
from connectors.amocrm.sandbox.state import ADMIN_ID, SandboxState

if TYPE_CHECKING:
    from connectors.amocrm.sandbox.guard import Guard
    from connectors.amocrm.sandbox.hooks import WebhookDispatcher


@dataclass
class Sandbox:
    state: SandboxState
    guard: Guard
    hooks: WebhookDispatcher


def sandbox(request: Request) -> Sandbox:
    box: Sandbox = request.app.state.sandbox
    return box


def base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def user_id(request: Request) -> int:
    return int(getattr(request.state, "user_id", ADMIN_ID))


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise ValidationFailed(
            {"0": [{"code": "InvalidJson", "path": "", "detail": "Request body is not valid JSON"}]}
        ) from exc


async def array_body(request: Request, limit: int = 250) -> list[dict[str, Any]]:
    """Bulk methods take a JSON array of objects (at most 250 per request, docs/crm/amocrm.md §3)."""
    body = await json_body(request)
    if not isinstance(body, list) or not body or not all(isinstance(i, dict) for i in body):
        raise ValidationFailed(
            {
                "0": [
                    {
                        "code": "InvalidType",
                        "path": "",
                        "detail": "This value should be of type array of objects.",
                    }
                ]
            }
        )
    if len(body) > limit:
        raise ValidationFailed(
            {"0": [{"code": "TooManyItems", "path": "", "detail": f"Max {limit} entities per request"}]}
        )
    return body


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
