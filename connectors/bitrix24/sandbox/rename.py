"""A renamed portal and a moved OAuth server, as the real ones behave.

- Rename: after a portal gets a new address, its old one answers REST calls with a redirect to the
  same path on the new host (PYSDK `errors/__init__.py`: `BitrixResponse302JSONDecodeError`, whose
  `new_domain` is the Location's host, and `bitrix_token.py`, which switches the domain and repeats
  the call). Events and token answers then name the new domain (`auth[domain]`,
  `auth[client_endpoint]`, `client_endpoint`). `POST /_sandbox/rename` does this; its `scheme` and
  `path` options make the redirect point elsewhere, which a client must refuse to follow.
- OAuth server: a token answer's `server_endpoint` names the OAuth server's REST base
  (`https://oauth.bitrix.info/rest/`, `https://oauth.bitrix24.tech/rest/` on RU portals: DOCS
  settings/oauth/index.md, b24-rest-docs issue #285). `POST /_sandbox/oauth/server` makes the
  answers name another host and path; the token endpoint is served under that path too, and every
  token request's host and path is recorded, so tests see where refreshes went.

The sandbox listens on one port; "another host" is another name for it (localhost vs 127.0.0.1):
the Host header tells which address a client used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from connectors.bitrix24.sandbox.config import SandboxConfig
from connectors.bitrix24.sandbox.engine import Portal
from connectors.bitrix24.sandbox.querystring import parse_php_query
from connectors.sandbox_support.asgi import EarlyAnswer
from connectors.sandbox_support.moves import Moves


@dataclass
class PortalMoves(Moves):
    token_requests: list[str] = field(default_factory=list)  # "host/path" of each token request

    def as_json(self) -> dict[str, Any]:
        return {**super().as_json(), "token_requests": list(self.token_requests)}


def install(app: FastAPI, portal: Portal, config: SandboxConfig) -> PortalMoves:
    moves = PortalMoves()
    app.state.moves = moves

    def redirect_old_address(request: Request) -> Response | None:
        path = request.url.path
        if path.endswith("/oauth/token/"):
            moves.token_requests.append(f"{request.headers.get('host', '')}{path}")
        return moves.redirect(request, ("/rest/",))

    app.add_middleware(EarlyAnswer, answer=redirect_old_address)

    @app.post("/_sandbox/rename")
    async def rename(request: Request) -> Response:
        """Body: {"new_host": "localhost:8000", "status": 302, "scheme": null, "path": null}. The host
        this request came to (or `old_host`) starts redirecting; events name the new domain."""
        spec = await request.json()
        wrong = moves.move(request, spec, default_status=302)
        if wrong is not None:
            return JSONResponse({"error": wrong}, status_code=400)
        scheme = urlsplit(config.public_url or str(request.base_url)).scheme or "http"
        config.domain = moves.new_host
        config.public_url = f"{scheme}://{moves.new_host}"
        return JSONResponse({"ok": True, **moves.as_json()})

    @app.get("/_sandbox/rename")
    async def moved() -> dict[str, Any]:
        return moves.as_json()

    @app.post("/_sandbox/oauth/server")
    async def move_oauth_server(request: Request) -> Response:
        """Body: {"server_endpoint": "http://localhost:8000/b24oauth/rest/"}: token answers name it
        from now on, and the token endpoint answers under its path too."""
        spec = await request.json()
        endpoint = str(spec.get("server_endpoint") or "")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or not parts.path.endswith("/rest/"):
            return JSONResponse(
                {"error": "server_endpoint must be an http(s) URL ending in /rest/"}, status_code=400
            )
        portal.server_endpoint = endpoint
        return JSONResponse({"ok": True})

    @app.api_route("/{prefix:path}/oauth/token/", methods=["GET", "POST"])
    async def moved_oauth_token(prefix: str, request: Request) -> Response:
        params = parse_php_query(request.url.query)
        body = await request.body()
        if body and "form-urlencoded" in request.headers.get("content-type", ""):
            params.update(parse_php_query(body.decode("utf-8", "replace")))
        status, answer = portal.refresh(params, config.public_url or str(request.base_url).rstrip("/"))
        return JSONResponse(answer, status_code=status)

    return moves
