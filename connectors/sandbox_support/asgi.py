"""Pure ASGI middleware for what stands in front of a sandbox's endpoints.

Starlette's `app.middleware("http")` (BaseHTTPMiddleware) runs the rest of the app in a task of its
own and pipes the answer back through memory streams. For a sandbox's small JSON answers that costs
more CPU than the endpoint itself, and the sandboxes serve every test and bench. These two shapes
cover what the sandboxes need in front of their endpoints, at the cost of a function call.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class EarlyAnswer:
    """Answers a request itself when `answer` returns a response (a redirect, say); otherwise the
    request goes on to the app untouched."""

    def __init__(self, app: ASGIApp, answer: Callable[[Request], Response | None]) -> None:
        self.app = app
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = self.answer(Request(scope))
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def pass_on(app: ASGIApp, scope: Scope, body: bytes, receive: Receive, send: Send) -> int:
    """Run `app` on a request whose body the caller has already read, and return the status code it
    answered with."""
    replayed = False
    status = 500  # what the server answers should the app send nothing

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    async def observe(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    await app(scope, replay, observe)
    return status
