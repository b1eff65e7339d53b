"""Opt-out: the signed personal link in every message, and the record that stops further messages.

The link is `{public_url}/opt-out/{token}`; the token carries the connection, the channel and the
address, signed with HMAC-SHA256 under derived_key(settings, "opt-out"), so nobody can opt out an
address they were not sent. Opening the link only shows a page with a button (mail scanners and
link previews fetch links); the button's POST records the opt-out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import dialect_insert
from app.messages.addresses import normalise
from app.messages.models import OptOut
from app.messages.statuses import OptOutSource
from app.security import derived_key

PURPOSE = "opt-out"
SIGNATURE_BYTES = 16


class BadOptOutToken(ValueError):
    pass


@dataclass(frozen=True)
class OptOutTarget:
    connection_id: int
    channel: str
    address: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(settings: Settings, body: bytes) -> bytes:
    return hmac.new(derived_key(settings, PURPOSE), body, hashlib.sha256).digest()[:SIGNATURE_BYTES]


def make_token(settings: Settings, connection_id: int, channel: str, address: str) -> str:
    body = json.dumps([connection_id, channel, normalise(channel, address)], separators=(",", ":")).encode()
    return f"{_b64(body)}.{_b64(_signature(settings, body))}"


def read_token(settings: Settings, token: str) -> OptOutTarget:
    """The target of a token this service signed; BadOptOutToken for anything else."""
    try:
        body_text, signature_text = token.split(".", 1)
        body, signature = _unb64(body_text), _unb64(signature_text)
    except (ValueError, binascii.Error):
        raise BadOptOutToken("this opt-out link is damaged") from None
    if not hmac.compare_digest(signature, _signature(settings, body)):
        raise BadOptOutToken("this opt-out link is damaged")
    connection_id, channel, address = json.loads(body)
    return OptOutTarget(int(connection_id), str(channel), str(address))


def opt_out_url(
    settings: Settings, connection_id: int, channel: str, address: str, language: str = "ru"
) -> str:
    """The personal link; the page opens in the messages' language (Russian unless English)."""
    token = make_token(settings, connection_id, channel, address)
    return f"{settings.public_url.rstrip('/')}/opt-out/{token}" + ("?lang=en" if language == "en" else "")


async def record_opt_out(
    session: AsyncSession, connection_id: int, channel: str, address: str, source: OptOutSource | str
) -> bool:
    """Stop messages to `address` on `channel` for this connection; True when it is new (a repeat
    changes nothing). The Telegram bot calls this for "/stop" (source "command")."""
    values = {
        "connection_id": connection_id,
        "channel": channel,
        "address": normalise(channel, address),
        "source": OptOutSource(source),
    }
    result = await session.execute(
        dialect_insert(session, OptOut)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["connection_id", "channel", "address"])
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def opted_out(session: AsyncSession, connection_id: int, pairs: Iterable[tuple[str, str]]) -> set[str]:
    """Of the (channel, address) pairs, the channels whose address opted out."""
    wanted = {(channel, normalise(channel, address)) for channel, address in pairs if address}
    if not wanted:
        return set()
    rows = await session.execute(
        select(OptOut.channel, OptOut.address).where(
            OptOut.connection_id == connection_id, OptOut.address.in_([a for _, a in wanted])
        )
    )
    return {channel for channel, address in rows if (channel, address) in wanted}


async def list_opt_outs(session: AsyncSession, connection_id: int) -> list[OptOut]:
    return list(
        await session.scalars(select(OptOut).where(OptOut.connection_id == connection_id).order_by(OptOut.id))
    )


async def remove_opt_out(session: AsyncSession, connection_id: int, channel: str, address: str) -> bool:
    row = await session.scalar(
        select(OptOut).where(
            OptOut.connection_id == connection_id,
            OptOut.channel == channel,
            OptOut.address == normalise(channel, address),
        )
    )
    if row is None:
        return False
    await session.delete(row)
    return True
