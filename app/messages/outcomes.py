"""How a send ends, written to the message (and to the account or the opt-outs when the provider's
answer says so), and what a worker that died mid-request left behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.messages.accounts import pause_account
from app.messages.models import ChannelAccount, Message
from app.messages.optout import record_opt_out
from app.messages.statuses import MessageStatus, OptOutSource
from app.outbox.delivery import RetrySettings
from connectors.channels.base import (
    ChannelAccountRefused,
    ChannelError,
    PermanentChannelError,
    Receipt,
    RecipientUnreachable,
    TemporaryChannelError,
)

# A message in `sending` longer than this has lost its worker (every adapter gives up well before).
SENDING_TIMEOUT = timedelta(minutes=10)
NO_ANSWER = "no answer from the provider (the worker stopped mid-request); it may have been delivered"
DUE_STATUSES = (MessageStatus.QUEUED, MessageStatus.FAILED)


@dataclass
class DeliveryResult:
    sent: int = 0
    deferred: int = 0  # quiet hours, the daily limit, a paused account
    retried: int = 0
    dead: int = 0
    skipped: int = 0
    paused_accounts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, other: DeliveryResult) -> None:
        self.sent += other.sent
        self.deferred += other.deferred
        self.retried += other.retried
        self.dead += other.dead
        self.skipped += other.skipped
        self.paused_accounts += other.paused_accounts
        self.errors += other.errors


async def recover_abandoned(session: AsyncSession, connection_id: int, now: datetime) -> tuple[int, int]:
    """Messages left `sending` past SENDING_TIMEOUT: a worker died mid-request, so whether the
    provider took them is unknown. A webhook is sent again (it carries the message's key as its
    id, so the receiver drops a repeat); an SMS, an email or a Telegram message is never sent
    blindly again: it goes dead saying it may have been delivered. (resent, dead)"""
    abandoned = list(
        await session.scalars(
            select(Message).where(
                Message.connection_id == connection_id,
                Message.status == MessageStatus.SENDING,
                Message.next_attempt_at <= now,
            )
        )
    )
    resent = 0
    for message in abandoned:
        if message.channel == "webhook":
            message.status, message.next_attempt_at = MessageStatus.QUEUED, now
            message.last_error = "the last attempt got no answer; sent again with the same webhook-id"
            resent += 1
        else:
            message.status, message.last_error = MessageStatus.DEAD, NO_ANSWER
    return resent, len(abandoned) - resent


async def claim(session: AsyncSession, message_id: int, now: datetime) -> bool:
    """Mark the message `sending` before its request, if no one else did: committed by the caller
    before the request goes out, so a crash leaves a trace instead of a silent resend."""
    result = await session.execute(
        update(Message)
        .where(Message.id == message_id, Message.status.in_(DUE_STATUSES), Message.next_attempt_at <= now)
        .values(
            status=MessageStatus.SENDING,
            attempts=Message.attempts + 1,
            next_attempt_at=now + SENDING_TIMEOUT,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_sent(message: Message, receipt: Receipt, at: datetime) -> None:
    message.status = MessageStatus.SENT
    message.provider_id = receipt.provider_id
    message.sent_at = at
    message.last_error = None


async def record_failure(
    session: AsyncSession,
    message: Message,
    account: ChannelAccount,
    exc: ChannelError,
    retry: RetrySettings,
    now: datetime,
    result: DeliveryResult,
) -> None:
    """Write what the provider said. Order matters: the error classes are subclasses."""
    message.last_error = exc.provider_text
    if isinstance(exc, ChannelAccountRefused):
        # Not this message's fault: the account is paused and the message waits, queued.
        pause_account(account, exc.provider_text)
        message.status, message.next_attempt_at = MessageStatus.QUEUED, now
        message.attempts = max(message.attempts - 1, 0)
        result.paused_accounts.append(account.channel)
        result.deferred += 1
    elif isinstance(exc, RecipientUnreachable):
        message.status = MessageStatus.DEAD
        if message.channel and message.recipient:
            await record_opt_out(
                session, message.connection_id, message.channel, message.recipient, OptOutSource.UNREACHABLE
            )
        result.dead += 1
    elif isinstance(exc, PermanentChannelError) or message.attempts >= retry.max_attempts:
        message.status = MessageStatus.DEAD
        result.dead += 1
    else:
        hint = exc.retry_after if isinstance(exc, TemporaryChannelError) else None
        message.status = MessageStatus.FAILED
        message.next_attempt_at = now + retry.next_delay(message.attempts, hint)
        result.retried += 1
