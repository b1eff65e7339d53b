"""Webhook mode: Telegram POSTs each Update to /bot/telegram/{connection}/{template}, proving itself
with the X-Telegram-Bot-Api-Secret-Token header set by setWebhook (a secret derived per connection
from FUNNELSYNC_SECRET_KEY, so nothing new is stored). `register_webhook` is what
`funnelsync bot telegram CONN TEMPLATE --webhook` runs."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, status

from app.api.deps import SessionsDep, SettingsDep
from app.bot.service import BotSetupError, BotTarget, load_target, open_bot, process_update, telegram_account
from app.config import Settings
from app.messages.accounts import ChannelAddressRefused
from app.runtime import Sessions
from app.security import derived_key, tokens_match
from app.waker import OUTBOX_JOB, WakerDep

router = APIRouter(prefix="/bot/telegram", tags=["bot"])
log = logging.getLogger("funnelsync.bot")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1_000_000  # an Update is a few kilobytes; anything near this is not Telegram


def webhook_secret(settings: Settings, connection_name: str) -> str:
    """The secret_token for this connection's bot webhook: 43 characters of [A-Za-z0-9_-], which is
    what setWebhook accepts (1-256 of them)."""
    key = derived_key(settings, f"telegram bot webhook {connection_name}")
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def webhook_url(settings: Settings, connection_name: str, template_key: str) -> str:
    base = settings.public_url.rstrip("/")
    return f"{base}/bot/telegram/{quote(connection_name, safe='')}/{quote(template_key, safe='')}"


async def register_webhook(settings: Settings, sessions: Sessions, target: BotTarget) -> str:
    """setWebhook with this bot's URL and secret; the URL. Telegram then stops serving getUpdates."""
    async with sessions() as session:
        account = await telegram_account(session, target.connection_id)
    url = webhook_url(settings, target.connection_name, target.template.key)
    bot = await open_bot(settings, account)
    try:
        await bot.set_webhook(url, webhook_secret(settings, target.connection_name))
    finally:
        await bot.aclose()
    return url


@router.post("/{connection}/{template}")
async def telegram_update(
    connection: str,
    template: str,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    waker: WakerDep,
) -> dict[str, Any]:
    """One Update from Telegram. Checked before anything is read: a wrong or missing secret is 403
    with nothing stored or sent."""
    if not tokens_match(request.headers.get(SECRET_HEADER), webhook_secret(settings, connection)):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"telegram update refused: wrong or missing {SECRET_HEADER}"
        )
    update = await _read_update(request)
    async with sessions() as session:
        try:
            target = await load_target(session, connection, template)
        except BotSetupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        account = await telegram_account(session, target.connection_id)
    try:
        bot = await open_bot(settings, account)
    except ChannelAddressRefused as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    try:
        changed = await process_update(sessions, target, bot, update)
    finally:
        await bot.aclose()
    if changed:
        waker.wake(OUTBOX_JOB)  # a finished conversation queued its deal
    return {"ok": True}


async def _read_update(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_UPDATE_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_UPDATE_BYTES} bytes")
    try:
        update = json.loads(body)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the body is not JSON") from exc
    if not isinstance(update, dict):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "a Telegram Update is a JSON object")
    return update
