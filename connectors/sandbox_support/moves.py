"""A renamed account in either CRM sandbox: the old address answers the API with a redirect to the
same path on the new host, as a renamed Bitrix24 portal does (docs/crm/bitrix24.md §5) and as the
amoCRM sandbox assumes (UNVERIFIED, docs/crm/amocrm.md §1). Each sandbox's rename.py says which
paths redirect and what else a rename changes (webhook bodies, token answers).

Sandbox-only, like the rest of connectors/sandbox_support: the package and the image leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request, Response

REDIRECT_STATUSES = (301, 302, 307, 308)


@dataclass
class Moves:
    old_hosts: set[str] = field(default_factory=set)  # Host headers answered with a redirect
    new_host: str = ""
    status: int = 301
    scheme: str | None = None  # Location scheme instead of the request's (not a rename)
    path: str | None = None  # Location path instead of the request's (not a rename)
    redirects: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"old_hosts": sorted(self.old_hosts), "new_host": self.new_host, "redirects": self.redirects}

    def redirect(self, request: Request, prefixes: tuple[str, ...]) -> Response | None:
        """The redirect a request to an old address gets, or None when it is served as usual."""
        path = request.url.path
        if request.headers.get("host", "") not in self.old_hosts or not path.startswith(prefixes):
            return None
        self.redirects += 1
        scheme = self.scheme or request.url.scheme
        query = f"?{request.url.query}" if request.url.query else ""
        location = f"{scheme}://{self.new_host}{self.path or path}{query}"
        # An HTML body, as web servers send with a redirect: not the JSON a REST client expects.
        body = f"<html><head><title>{self.status} Moved</title></head><body></body></html>"
        return Response(body, status_code=self.status, headers={"Location": location}, media_type="text/html")

    def move(self, request: Request, spec: dict[str, Any], default_status: int) -> str | None:
        """Apply a `POST /_sandbox/rename` body: the host the request came to (or `old_host`) starts
        redirecting to `new_host`. Returns what is wrong with the body, or None when applied."""
        new_host = str(spec.get("new_host") or "")
        status = int(spec.get("status", default_status))
        if not new_host or "/" in new_host or status not in REDIRECT_STATUSES:
            return "give new_host as host[:port] and status one of 301, 302, 307, 308"
        self.old_hosts.add(str(spec.get("old_host") or request.headers.get("host", "")))
        self.old_hosts.discard(new_host)
        self.new_host, self.status = new_host, status
        self.scheme, self.path = spec.get("scheme"), spec.get("path")
        return None
