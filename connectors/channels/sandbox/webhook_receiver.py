"""A receiver of Standard Webhooks deliveries, as a customer's endpoint would be, with control
endpoints under /_sandbox.

POST to any path outside /_sandbox is a delivery. It is verified with the standardwebhooks library
itself (not FunnelSync's code path), refused with 401 when the signature or timestamp is wrong,
and otherwise recorded once per webhook-id: a repeat is answered 200 again and counted, as the spec
asks receivers to do. Faults make the next N deliveries answer a status of choice (500, 429 with
Retry-After, 410...) before anything is verified, or hang.

Control endpoints:
    GET    /_sandbox/deliveries  accepted deliveries, one per webhook-id, oldest first, with repeats
    GET    /_sandbox/stats       attempts, accepted, repeats, refused signatures, faulted
    POST   /_sandbox/faults      {"status": 500, "count": 1, "retry_after": "7"} or
                                 {"hang": 5, "count": 1} (seconds, or until DELETE /_sandbox/faults)
    DELETE /_sandbox/faults      drop pending faults; hanging deliveries answer 503, nothing recorded
    POST   /_sandbox/reset       forget deliveries, counters and faults
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class ReceiverFault:
    count: int
    status: int = 500
    retry_after: str | None = None
    hang: float | None = None  # seconds to hold the delivery before handling it normally


@dataclass
class Receiver:
    secret: str
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)  # by webhook-id, in order
    stats: dict[str, int] = field(default_factory=dict)
    faults: list[ReceiverFault] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.release_hanging()
        self.deliveries.clear()
        self.stats = {"attempts": 0, "accepted": 0, "repeats": 0, "refused_signature": 0, "faulted": 0}

    def release_hanging(self) -> None:
        self.faults.clear()
        self.release.set()
        self.release = asyncio.Event()

    def take_fault(self) -> ReceiverFault | None:
        if not self.faults:
            return None
        fault = self.faults[0]
        fault.count -= 1
        if fault.count <= 0:
            self.faults.pop(0)
        return fault

    def record(self, headers: dict[str, str], path: str, body: bytes, payload: Any) -> None:
        webhook_id = headers["webhook-id"]
        known = self.deliveries.get(webhook_id)
        if known is not None:
            known["repeats"] += 1
            self.stats["repeats"] += 1
            return
        self.stats["accepted"] += 1
        self.deliveries[webhook_id] = {
            "id": webhook_id,
            "path": path,
            "timestamp": headers["webhook-timestamp"],
            "signature": headers["webhook-signature"],
            "body": body.decode("utf-8"),  # as received, for tests that verify the signature themselves
            "payload": payload,
            "repeats": 0,
        }


def _receiver(request: Request) -> Receiver:
    receiver: Receiver = request.app.state.receiver
    return receiver


# --- /_sandbox -------------------------------------------------------------------------------------

control = APIRouter(prefix="/_sandbox")


@control.get("/deliveries")
async def deliveries(request: Request) -> list[dict[str, Any]]:
    return list(_receiver(request).deliveries.values())


@control.get("/stats")
async def stats(request: Request) -> dict[str, int]:
    return _receiver(request).stats


@control.post("/faults")
async def add_fault(request: Request) -> Response:
    spec = await request.json()
    retry_after = spec.get("retry_after")
    hang = spec.get("hang")
    fault = ReceiverFault(
        count=int(spec.get("count", 1)),
        status=int(spec.get("status", 500)),
        retry_after=None if retry_after is None else str(retry_after),
        hang=None if hang is None else float(hang),
    )
    _receiver(request).faults.append(fault)
    return JSONResponse({"ok": True})


@control.delete("/faults")
async def clear_faults(request: Request) -> dict[str, Any]:
    _receiver(request).release_hanging()
    return {"ok": True}


@control.post("/reset")
async def reset(request: Request) -> dict[str, Any]:
    _receiver(request).reset()
    return {"ok": True}


# --- deliveries ------------------------------------------------------------------------------------

hooks = APIRouter()


@hooks.post("/{path:path}")
async def deliver(path: str, request: Request) -> Response:
    receiver = _receiver(request)
    receiver.stats["attempts"] += 1
    fault = receiver.take_fault()
    if fault is not None:
        refusal = await _apply_fault(receiver, fault)
        if refusal is not None:
            return refusal
    body = await request.body()
    headers = {key.lower(): value for key, value in request.headers.items()}
    try:
        payload = Webhook(receiver.secret).verify(body, headers)
    except (WebhookVerificationError, ValueError) as exc:  # ValueError: malformed signature header
        receiver.stats["refused_signature"] += 1
        return JSONResponse({"error": f"signature refused: {exc}"}, status_code=401)
    receiver.record(headers, "/" + path, body, payload)
    return JSONResponse({"ok": True})


async def _apply_fault(receiver: Receiver, fault: ReceiverFault) -> Response | None:
    """The fault's answer, or None to handle the delivery normally after a hang that lasted its
    seconds. A hang released by DELETE /_sandbox/faults or a reset answers 503 and records nothing,
    so it cannot leak into what a test looks at next."""
    if fault.hang is not None:
        try:
            async with asyncio.timeout(fault.hang):
                await receiver.release.wait()
        except TimeoutError:
            return None
        return JSONResponse({"error": "released by the sandbox's control endpoint"}, status_code=503)
    receiver.stats["faulted"] += 1
    headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
    return JSONResponse({"error": "fault injected"}, status_code=fault.status, headers=headers)


def create_webhook_receiver_app(secret: str) -> FastAPI:
    """The receiver for deliveries signed with `secret` ("whsec_..." as new_secret() makes)."""
    app = FastAPI(title="Webhook receiver sandbox")
    app.state.receiver = Receiver(secret)
    app.include_router(control)  # before the catch-all delivery route
    app.include_router(hooks)
    return app
