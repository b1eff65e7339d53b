"""/api/messages and /api/connections/{name}/{channels,messaging,opt-outs} (bearer token), and the
public opt-out page /opt-out/{token} (the token is the credential)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from app.api.deps import SessionsDep, SettingsDep
from app.connections import service as connections
from app.dashboard.render import render
from app.messages import accounts, optout
from app.messages.policy import MessagingPolicy, policy_of, set_policy
from app.messages.schemas import AccountIn, AccountOut, MessagePage, OptOutIn, OptOutOut
from app.messages.service import BadMessageFilter, MessageFilter, list_messages
from app.messages.statuses import MESSAGE_CHANNELS, OptOutSource
from app.security import require_api_token

router = APIRouter(prefix="/api", tags=["messages"], dependencies=[Depends(require_api_token)])
public_router = APIRouter(include_in_schema=False)
UNPROCESSABLE = status.HTTP_422_UNPROCESSABLE_CONTENT


def _invalid(exc: ValidationError | ValueError) -> HTTPException:
    if isinstance(exc, ValidationError):
        # The input is left out: it may hold a secret.
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors()]
        return HTTPException(UNPROCESSABLE, "; ".join(parts))
    return HTTPException(UNPROCESSABLE, str(exc))


@router.get("/messages")
async def get_messages(
    sessions: SessionsDep,
    connection: str | None = None,
    deal_id: int | None = None,
    channel: str | None = None,
    status_: Annotated[str | None, Query(alias="status")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> MessagePage:
    """The message log, newest first: filter by connection name, deal (local id), channel, status."""
    async with sessions() as session:
        connection_id = (await connections.get_connection(session, connection)).id if connection else None
        try:
            chosen = MessageFilter(connection_id, deal_id, channel, status_)
        except BadMessageFilter as exc:
            raise HTTPException(UNPROCESSABLE, str(exc)) from exc
        total, items = await list_messages(session, chosen, offset=offset, limit=limit)
    return MessagePage(total=total, offset=offset, limit=limit, items=items)


@router.get("/connections/{name}/channels")
async def get_accounts(name: str, sessions: SessionsDep, settings: SettingsDep) -> list[AccountOut]:
    async with sessions() as session:
        record = await connections.get_connection(session, name)
        return [
            AccountOut(**accounts.describe(a, settings))
            for a in await accounts.list_accounts(session, record.id)
        ]


@router.get("/connections/{name}/channels/{channel}")
async def get_account(name: str, channel: str, sessions: SessionsDep, settings: SettingsDep) -> AccountOut:
    async with sessions() as session:
        record = await connections.get_connection(session, name)
        try:
            account = await accounts.get_account(session, record, channel)
        except ValueError as exc:
            raise _invalid(exc) from exc
        return AccountOut(**accounts.describe(account, settings))


@router.put("/connections/{name}/channels/{channel}")
async def put_account(
    name: str, channel: str, body: AccountIn, sessions: SessionsDep, settings: SettingsDep
) -> AccountOut:
    """Set the channel's account (a replaced one is active again); 422 changes nothing."""
    async with sessions.begin() as session:
        record = await connections.get_connection(session, name)
        try:
            account = await accounts.set_account(
                session, settings, record, channel, body.config, body.secrets
            )
        except (ValidationError, ValueError) as exc:
            raise _invalid(exc) from exc
        return AccountOut(**accounts.describe(account, settings))


@router.delete("/connections/{name}/channels/{channel}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_account(name: str, channel: str, sessions: SessionsDep) -> None:
    async with sessions.begin() as session:
        record = await connections.get_connection(session, name)
        try:
            await accounts.remove_account(session, record, channel)
        except ValueError as exc:
            raise _invalid(exc) from exc


@router.post("/connections/{name}/channels/{channel}/resume")
async def resume_account(name: str, channel: str, sessions: SessionsDep, settings: SettingsDep) -> AccountOut:
    """Resume an account the provider refused; its queued messages go at the next run."""
    async with sessions.begin() as session:
        record = await connections.get_connection(session, name)
        try:
            account = await accounts.resume_account(session, record, channel)
        except ValueError as exc:
            raise _invalid(exc) from exc
        return AccountOut(**accounts.describe(account, settings))


@router.get("/connections/{name}/messaging")
async def get_policy(name: str, sessions: SessionsDep) -> MessagingPolicy:
    async with sessions() as session:
        return policy_of(await connections.get_connection(session, name))


@router.put("/connections/{name}/messaging")
async def put_policy(
    name: str, body: Annotated[dict[str, Any], Body()], sessions: SessionsDep
) -> MessagingPolicy:
    """Change the keys given; the others keep their values. 422 changes nothing."""
    async with sessions.begin() as session:
        record = await connections.get_connection(session, name)
        try:
            return set_policy(record, body)
        except ValidationError as exc:
            raise _invalid(exc) from exc


@router.get("/connections/{name}/opt-outs")
async def get_opt_outs(name: str, sessions: SessionsDep) -> list[OptOutOut]:
    async with sessions() as session:
        record = await connections.get_connection(session, name)
        return [OptOutOut.model_validate(o) for o in await optout.list_opt_outs(session, record.id)]


def _opt_out_channel(body: OptOutIn) -> None:
    if body.channel not in MESSAGE_CHANNELS or body.channel == "webhook":
        raise HTTPException(UNPROCESSABLE, f"channel must be email, telegram or sms, not {body.channel!r}")


@router.post("/connections/{name}/opt-outs", status_code=status.HTTP_201_CREATED)
async def post_opt_out(name: str, body: OptOutIn, sessions: SessionsDep) -> dict[str, bool]:
    """Stop messages to an address on a channel (source "operator"); a repeat is harmless."""
    _opt_out_channel(body)
    async with sessions.begin() as session:
        record = await connections.get_connection(session, name)
        new = await optout.record_opt_out(
            session, record.id, body.channel, body.address, OptOutSource.OPERATOR
        )
    return {"created": new}


@router.delete("/connections/{name}/opt-outs", status_code=status.HTTP_204_NO_CONTENT)
async def delete_opt_out(name: str, body: OptOutIn, sessions: SessionsDep) -> None:
    _opt_out_channel(body)
    async with sessions.begin() as session:
        record = await connections.get_connection(session, name)
        if not await optout.remove_opt_out(session, record.id, body.channel, body.address):
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"{body.address} has not opted out of {body.channel}"
            )


# --- the public opt-out page ------------------------------------------------------------------------


def _target(request: Request, token: str) -> optout.OptOutTarget | HTMLResponse:
    try:
        return optout.read_token(request.app.state.settings, token)
    except optout.BadOptOutToken:
        return render(request, "optout.html", {"state": "bad"}, status_code=status.HTTP_404_NOT_FOUND)


@public_router.get("/opt-out/{token}")
async def opt_out_page(request: Request, token: str) -> HTMLResponse:
    """A confirmation page with a button: opening the link alone changes nothing (mail scanners
    and link previews open links)."""
    target = _target(request, token)
    if isinstance(target, HTMLResponse):
        return target
    return render(request, "optout.html", {"state": "ask", "target": target, "token": token})


@public_router.post("/opt-out/{token}")
async def opt_out(request: Request, token: str, sessions: SessionsDep) -> HTMLResponse:
    """Record the opt-out (a repeat is harmless) and say it is done. Also what a mail client's
    one-click unsubscribe (RFC 8058) posts."""
    target = _target(request, token)
    if isinstance(target, HTMLResponse):
        return target
    async with sessions.begin() as session:
        await optout.record_opt_out(
            session, target.connection_id, target.channel, target.address, OptOutSource.LINK
        )
    return render(request, "optout.html", {"state": "done", "target": target})
