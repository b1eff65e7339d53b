"""One page of an amoCRM list answer: `page` and `limit` from the query, HAL `_links` with the query
kept, and 204 with no body when the page is empty (docs/crm/amocrm.md, responses)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from connectors.amocrm.sandbox.common import base
from connectors.amocrm.sandbox.errors import hal, no_content


def page_args(request: Request, default: int, maximum: int) -> tuple[int, int]:
    q = request.query_params
    try:
        page = max(1, int(q.get("page", "1")))
        limit = min(maximum, max(1, int(q.get("limit", str(default)))))
    except ValueError:
        page, limit = 1, default
    return page, limit


def page_links(request: Request, page: int, has_next: bool) -> dict[str, Any]:
    path = base(request) + request.url.path
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "page"]

    def href(p: int) -> dict[str, str]:
        return {"href": f"{path}?{urlencode([*params, ('page', str(p))])}"}

    links = {"self": href(page)}
    if has_next:
        links["next"] = href(page + 1)
    if page > 1:
        links["prev"] = href(page - 1)
    return links


def paged(
    request: Request,
    rows: list[dict[str, Any]],
    key: str,
    *,
    render: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    maximum: int = 250,
    with_total: bool = False,
) -> Response:
    """The page of `rows` the query asks for (`limit` 50 by default, at most `maximum`: 250 is
    what the leads, tasks and notes pages document) under
    `_embedded[key]`, each row through `render`; `with_total`: the answer counts its items in
    `_total_items`, as the fields, loss reasons and users lists do."""
    page, limit = page_args(request, 50, maximum)
    chunk = rows[(page - 1) * limit : page * limit]
    if not chunk:
        return no_content()
    body: dict[str, Any] = {"_total_items": len(chunk)} if with_total else {}
    body |= {
        "_page": page,
        "_links": page_links(request, page, len(rows) > page * limit),
        "_embedded": {key: [render(row) for row in chunk] if render else chunk},
    }
    return hal(body)
