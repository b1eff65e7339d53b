"""A renamed account: the subdomain changes, webhooks say so, and the old address redirects.

What amoCRM documents: an account's subdomain can change; amocrm-api-php finds the current one with
`GET https://{api_domain}/oauth2/account/current/subdomain` and header `X-Refresh-Token` (PHPLIB
`src/AmoCRM/OAuth/AmoCRMOAuth.php`, PR #571), and webhook bodies carry `account[subdomain]`
(developers.kommo.com/docs/webhooks-general). What the old address answers is UNVERIFIED: PHPLIB's
Guzzle client follows redirects (it maps Guzzle's TooManyRedirectsException), so the sandbox answers
the API paths of the old address with a redirect (301 by default) to the same path on the new host,
the same rule FunnelSync follows for Bitrix24. `scheme`/`path` options make it point elsewhere.

The sandbox listens on one port; "another host" is another name for it (localhost vs 127.0.0.1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from connectors.amocrm.sandbox.common import Sandbox

REDIRECT_STATUSES = (301, 302, 307, 308)
_API_PATHS = ("/api/", "/oauth2/")


@dataclass
class Moves:
    old_hosts: set[str] = field(default_factory=set)
    new_host: str = ""
    status: int = 301
    scheme: str | None = None
    path: str | None = None
    redirects: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"old_hosts": sorted(self.old_hosts), "new_host": self.new_host, "redirects": self.redirects}


def install(app: FastAPI, box: Sandbox) -> Moves:
    moves = Moves()
    app.state.moves = moves

    async def redirect_old_address(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if request.headers.get("host", "") in moves.old_hosts and path.startswith(_API_PATHS):
            moves.redirects += 1
            scheme = moves.scheme or request.url.scheme
            query = f"?{request.url.query}" if request.url.query else ""
            location = f"{scheme}://{moves.new_host}{moves.path or path}{query}"
            body = f"<html><head><title>{moves.status} Moved</title></head><body></body></html>"
            return Response(
                body, status_code=moves.status, headers={"Location": location}, media_type="text/html"
            )
        return await call_next(request)

    app.middleware("http")(redirect_old_address)

    @app.post("/_sandbox/rename")
    async def rename(request: Request) -> Response:
        """Body: {"subdomain": "newname", "new_host": "localhost:8000", "status": 301}. Webhooks
        carry the new subdomain; the host this request came to (or `old_host`) redirects."""
        spec = await request.json()
        subdomain = str(spec.get("subdomain") or "")
        new_host = str(spec.get("new_host") or "")
        status = int(spec.get("status", 301))
        if not subdomain or not new_host or "/" in new_host or status not in REDIRECT_STATUSES:
            return JSONResponse(
                {"error": "give subdomain, new_host as host[:port] and status one of 301, 302, 307, 308"},
                status_code=400,
            )
        moves.old_hosts.add(str(spec.get("old_host") or request.headers.get("host", "")))
        moves.old_hosts.discard(new_host)
        moves.new_host, moves.status = new_host, status
        moves.scheme, moves.path = spec.get("scheme"), spec.get("path")
        box.state.config.subdomain = subdomain
        return JSONResponse({"ok": True, **moves.as_json()})

    @app.get("/_sandbox/rename")
    async def moved() -> dict[str, Any]:
        return moves.as_json()

    return moves
