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

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from connectors.amocrm.sandbox.common import Sandbox
from connectors.sandbox_support.asgi import EarlyAnswer
from connectors.sandbox_support.moves import Moves

_API_PATHS = ("/api/", "/oauth2/")


def install(app: FastAPI, box: Sandbox) -> Moves:
    moves = Moves()
    app.state.moves = moves

    app.add_middleware(EarlyAnswer, answer=lambda request: moves.redirect(request, _API_PATHS))

    @app.post("/_sandbox/rename")
    async def rename(request: Request) -> Response:
        """Body: {"subdomain": "newname", "new_host": "localhost:8000", "status": 301}. Webhooks
        carry the new subdomain; the host this request came to (or `old_host`) redirects."""
        spec = await request.json()
        subdomain = str(spec.get("subdomain") or "")
        # `or` short-circuits: nothing moves when the subdomain is missing.
        if not subdomain or moves.move(request, spec, default_status=301) is not None:
            return JSONResponse(
                {"error": "give subdomain, new_host as host[:port] and status one of 301, 302, 307, 308"},
                status_code=400,
            )
        box.state.config.subdomain = subdomain
        return JSONResponse({"ok": True, **moves.as_json()})

    @app.get("/_sandbox/rename")
    async def moved() -> dict[str, Any]:
        return moves.as_json()

    return moves
