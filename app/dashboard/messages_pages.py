"""The dashboard's messages page: counts by channel and status, then the log with filters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import HTMLResponse

from app.api.deps import SessionsDep
from app.connections import service as connections
from app.dashboard.auth import SessionDep
from app.dashboard.render import render
from app.errors import NotFound
from app.messages import service
from app.messages.statuses import MESSAGE_CHANNELS

router = APIRouter(include_in_schema=False)
PAGE = 100


@router.get("/messages")
async def messages_page(
    request: Request,
    _: SessionDep,
    sessions: SessionsDep,
    connection: str = "",
    channel: str = "",
    status_: Annotated[str, Query(alias="status")] = "",
    deal_id: str = "",
) -> HTMLResponse:
    """ "" in a filter means all. An unknown connection is 404, a bad channel, status or deal 400."""
    async with sessions() as session:
        try:
            record = await connections.get_connection(session, connection) if connection else None
            if deal_id and not deal_id.isdigit():
                raise service.BadMessageFilter(f"deal must be a number, not {deal_id!r}")
            chosen = service.MessageFilter(
                record.id if record else None,
                int(deal_id) if deal_id else None,
                channel or None,
                status_ or None,
            )
        except NotFound as exc:
            return render(
                request, "error.html", {"message": str(exc), "back_url": "/messages"}, status_code=404
            )
        except service.BadMessageFilter as exc:
            problem = {"message": str(exc), "heading": "bad_request", "back_url": "/messages"}
            return render(request, "error.html", problem, status_code=status.HTTP_400_BAD_REQUEST)
        counts = await service.counts(session, chosen.connection_id)
        total, items = await service.list_messages(session, chosen, limit=PAGE)
        choices = await connections.list_connections(session)
    context: dict[str, Any] = {
        "active": "messages",
        "counts": counts,
        "count_channels": sorted({c for c, _ in counts}),
        "statuses": service.STATUSES,
        "channels": MESSAGE_CHANNELS,
        "connections": choices,
        "messages": items,
        "total": total,
        "filter": {"connection": connection, "channel": channel, "status": status_, "deal_id": deal_id},
    }
    return render(request, "messages.html", context)
