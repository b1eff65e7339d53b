"""Deliver queued messages: the job body of the message outbox.

Per connection with due messages (queued or failed, next_attempt_at reached), under a lease so one
process works on one connection's messages at a time:

1. recover what a dead worker left `sending` (app.messages.outcomes.recover_abandoned: a webhook is
   sent again with the same id, anything else goes dead with "no answer; it may have been
   delivered", since an SMS, an email or a Telegram message cannot be taken back or deduplicated);
2. resolve the messages not yet addressed: the deal's contacts (cache, or the CRM when missing or
   stale), the first of the action's channels with an account, an address and no opt-out
   (none: `skipped`, saying why), the text in the connection's language with the opt-out line;
3. per message: opted out since -> skipped; quiet hours -> next_attempt_at moves to their end (the
   status stays); the daily limit, counted over messages sent to that recipient in the local day ->
   next_attempt_at moves to the next day; else `sending` is committed, the request goes out and its
   outcome is written (app.messages.outcomes.record_failure says which error does what).

One adapter per channel account per run, closed afterwards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import leases
from app.automations.policy import allowed, choose_channel, day_bounds, next_send_time
from app.config import Settings
from app.connections.models import Connection, ConnectionSwitch
from app.connections.users import UserDirectory
from app.db import utcnow
from app.deals.models import Deal
from app.messages import contacts as contact_cache
from app.messages.accounts import ChannelAddressRefused, open_channel
from app.messages.compose import compose, contact_with, placeholder_values
from app.messages.enqueue import WEBHOOK
from app.messages.models import ChannelAccount, Message
from app.messages.optout import opt_out_url, opted_out
from app.messages.outcomes import (
    DUE_STATUSES,
    DeliveryResult,
    claim,
    record_failure,
    record_sent,
    recover_abandoned,
)
from app.messages.policy import MessagingPolicy, policy_of
from app.messages.statuses import ChannelAccountStatus, MessageStatus
from app.outbox.delivery import RetrySettings
from app.rules.service import FunnelCache
from connectors.base import ContactInfo, CRMConnector, CRMError
from connectors.channels.base import Channel, ChannelAccountRefused, ChannelError, OutgoingMessage
from funnel_templates.placeholders import MissingPlaceholderValues

if TYPE_CHECKING:
    from app.scheduler import Runtime

__all__ = ["DeliveryResult", "deliver_messages", "run_message_delivery"]

log = logging.getLogger("funnelsync.messages")

MESSAGES_JOB = "messages"
LEASE_TTL = timedelta(minutes=15)
BATCH = 500  # due messages read per connection per run
NO_ACCOUNT_WAIT = timedelta(hours=1)
# {manager.name}: the responsible user's name, from the CRM's user list, cached per process.
MANAGERS = UserDirectory()  # a message none of whose channels has an account looks again
ConnectorGetter = Callable[[Connection], Awaitable[CRMConnector]]


async def run_message_delivery(runtime: Runtime) -> DeliveryResult:
    """The scheduler's job: deliver every connection's due messages."""
    result = await deliver_messages(runtime.sessions, runtime.settings, runtime.connectors.get)
    if result.sent or result.dead or result.skipped:
        log.info(
            "messages: %s sent, %s deferred, %s retried, %s dead, %s skipped",
            result.sent,
            result.deferred,
            result.retried,
            result.dead,
            result.skipped,
        )
    return result


async def deliver_messages(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    get_connector: ConnectorGetter | None,
    now: datetime | None = None,
    *,
    retry: RetrySettings | None = None,
) -> DeliveryResult:
    """Deliver due messages of every active connection. `get_connector` reads missing contacts from
    the CRM (None: the cache only). `now` is the clock of the whole run."""
    now = now or utcnow()
    retry = retry or RetrySettings.from_settings(settings)
    total = DeliveryResult()
    async with sessions() as session:
        records = await _connections_with_work(session, now)
    for record in records:
        run = _ConnectionRun(sessions, settings, record, get_connector, now, retry)
        total.add(await run.deliver())
    return total


async def _connections_with_work(session: AsyncSession, now: datetime) -> list[Connection]:
    due = (
        select(Message.connection_id)
        .where(
            or_(Message.status.in_(DUE_STATUSES), Message.status == MessageStatus.SENDING),
            Message.next_attempt_at <= now,
        )
        .distinct()
    )
    return list(
        await session.scalars(
            select(Connection).where(Connection.status == ConnectionSwitch.ACTIVE, Connection.id.in_(due))
        )
    )


class _ConnectionRun:
    """One connection's share of a run: its accounts, policy and open adapters."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        record: Connection,
        get_connector: ConnectorGetter | None,
        now: datetime,
        retry: RetrySettings,
    ) -> None:
        self.sessions, self.settings, self.record = sessions, settings, record
        self.get_connector, self.now, self.retry = get_connector, now, retry
        self.policy: MessagingPolicy = policy_of(record)
        self.result = DeliveryResult()
        self.accounts: dict[str, ChannelAccount] = {}
        self.channels: dict[str, Channel] = {}

    async def deliver(self) -> DeliveryResult:
        key = f"messages:{self.record.id}"
        if not await leases.acquire(self.sessions, key, LEASE_TTL):
            return self.result  # another process works on this connection now
        try:
            async with self.sessions.begin() as session:
                _resent, dead = await recover_abandoned(session, self.record.id, self.now)
                self.result.dead += dead
            await self._load_accounts()
            due = await self._due_ids()
            await self._resolve(due)
            for message_id in due:
                await self._deliver_one(message_id)
        finally:
            for channel in self.channels.values():
                await channel.aclose()
            await leases.release(self.sessions, key)
        return self.result

    async def _load_accounts(self) -> None:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(ChannelAccount).where(ChannelAccount.connection_id == self.record.id)
            )
            self.accounts = {a.channel: a for a in rows}

    async def _due_ids(self) -> list[int]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Message.id)
                .where(
                    Message.connection_id == self.record.id,
                    Message.status.in_(DUE_STATUSES),
                    Message.next_attempt_at <= self.now,
                )
                .order_by(Message.next_attempt_at, Message.id)
                .limit(BATCH)
            )
            return list(rows)

    # --- resolving: channel, address, text ----------------------------------------------------

    async def _resolve(self, due: list[int]) -> None:
        async with self.sessions() as session:
            pending = list(
                await session.scalars(select(Message).where(Message.id.in_(due), Message.recipient.is_(None)))
            )
        if not pending:
            return
        deal_ids = [m.deal_id for m in pending if m.deal_id is not None and m.channel != WEBHOOK]
        contacts = await self._contacts(deal_ids)
        funnels = FunnelCache(self.record)
        async with self.sessions.begin() as session:
            for message in pending:
                session.add(message)
                if message.channel == WEBHOOK:
                    self._address_webhook(message)
                else:
                    found = contacts.get(message.deal_id, []) if message.deal_id is not None else []
                    await self._address_notify(session, funnels, message, found)

    async def _contacts(self, deal_ids: list[int]) -> dict[int, list[ContactInfo]]:
        ttl = contact_cache.contacts_ttl(self.settings)
        connector = None
        try:
            if self.get_connector is not None and deal_ids:
                connector = await self.get_connector(self.record)
            return await contact_cache.contacts_for(
                self.sessions, self.record, connector, deal_ids, now=self.now, ttl=ttl
            )
        except CRMError as exc:  # the CRM is down: what the cache holds, however old
            self.result.errors.append(f"{self.record.name}: contacts: {exc.crm_text}")
            return await contact_cache.contacts_for(
                self.sessions, self.record, None, deal_ids, now=self.now, ttl=ttl
            )

    def _address_webhook(self, message: Message) -> None:
        account = self.accounts.get(WEBHOOK)
        if account is None:
            self._wait_for_account(message, [WEBHOOK])
            return
        payload = message.payload or {}
        message.recipient = str(account.config.get("url"))
        message.text = json.dumps(payload.get("data") or {}, ensure_ascii=False, separators=(",", ":"))

    def _wait_for_account(self, message: Message, channels: list[str]) -> None:
        message.next_attempt_at = self.now + NO_ACCOUNT_WAIT
        message.last_error = f"waiting: the connection has no account for {', '.join(channels)}"
        self.result.deferred += 1

    def _skip(self, message: Message, reason: str) -> None:
        message.status, message.last_error = MessageStatus.SKIPPED, reason
        self.result.skipped += 1

    async def _address_notify(
        self, session: AsyncSession, funnels: FunnelCache, message: Message, found: list[ContactInfo]
    ) -> None:
        payload = message.payload or {}
        wanted: list[Any] = list(payload.get("channels") or [])
        preferences = [c for c in wanted if c in self.accounts]
        if not preferences:
            self._wait_for_account(message, wanted)
            return
        reach = contact_cache.reachable(found)
        pairs = [(c, reach[c]) for c in preferences if c in reach]
        refused = await opted_out(session, self.record.id, pairs)
        chosen = choose_channel(preferences, reach, refused)  # type: ignore[arg-type]
        if chosen is None:
            why = f"opted out of {', '.join(sorted(refused))}" if refused else "no address"
            self._skip(message, f"the contact cannot be messaged on {', '.join(preferences)} ({why})")
            return
        channel, address = chosen
        deal = await session.get(Deal, message.deal_id) if message.deal_id is not None else None
        url = opt_out_url(self.settings, self.record.id, channel, address, self.policy.language)
        contact = contact_with(found, channel, address)
        manager = await self._manager_name(deal.responsible_id if deal else None)
        values = await placeholder_values(session, funnels, deal, contact, self.policy, url, manager)
        try:
            composed = compose(payload, self.policy.language, values, with_opt_out=True)
        except MissingPlaceholderValues as exc:
            self._skip(message, f"not sent: {exc}")
            return
        message.channel, message.recipient = channel, address
        message.text, message.subject = composed.text, composed.subject

    async def _manager_name(self, user_id: str | None) -> str | None:
        """The responsible user's name; None when unknown (a text naming {manager.name} then waits
        as skipped, with the reason, rather than going out with a gap)."""
        if not user_id or self.get_connector is None:
            return None
        user = (await MANAGERS.users(self.record, self.get_connector)).get(str(user_id))
        return user.name if user else None

    # --- sending --------------------------------------------------------------------------------

    async def _deliver_one(self, message_id: int) -> None:
        async with self.sessions.begin() as session:
            message = await session.get(Message, message_id)
            if message is None or not await self._may_send_now(session, message):
                return
            if not await claim(session, message_id, self.now):
                return  # another run took it
        await self._send(message_id)

    async def _may_send_now(self, session: AsyncSession, message: Message) -> bool:
        """False when the message waits (unaddressed, paused account, quiet hours, daily limit) or
        was skipped (opted out since it was addressed)."""
        if message.status not in DUE_STATUSES or message.channel is None or message.recipient is None:
            return False
        account = self.accounts.get(message.channel)
        if account is None or account.status != ChannelAccountStatus.ACTIVE:
            self.result.deferred += 1
            return False
        if message.channel == WEBHOOK:
            return True
        if await opted_out(session, self.record.id, [(message.channel, message.recipient)]):
            self._skip(message, f"the contact opted out of {message.channel}")
            return False
        return await self._within_policy(session, message)

    async def _within_policy(self, session: AsyncSession, message: Message) -> bool:
        quiet = self.policy.quiet
        allowed_at = next_send_time(self.now, quiet)
        if allowed_at > self.now:
            message.next_attempt_at = allowed_at
            self.result.deferred += 1
            return False
        start, end = day_bounds(self.now, self.policy.zone)
        sent_today = await session.scalar(
            select(func.count(Message.id)).where(
                Message.connection_id == self.record.id,
                Message.channel == message.channel,
                Message.recipient == message.recipient,
                Message.status == MessageStatus.SENT,
                Message.sent_at >= start,
                Message.sent_at < end,
            )
        )
        if not allowed(int(sent_today or 0), self.policy.limit):
            message.next_attempt_at = next_send_time(end, quiet)
            message.last_error = f"waiting: {self.policy.daily_limit} message(s) a day to this contact"
            self.result.deferred += 1
            return False
        return True

    async def _send(self, message_id: int) -> None:
        async with self.sessions() as session:
            message = await session.get(Message, message_id)
        assert message is not None and message.channel is not None and message.recipient is not None
        outgoing = OutgoingMessage(
            key=message.idempotency_key,
            recipient=message.recipient,
            text=message.text,
            subject=message.subject,
            metadata=self._metadata(message),
        )
        try:
            channel = await self._channel(message.channel)
            receipt = await channel.send(outgoing)
        except ChannelError as exc:
            await self._record_failure(message_id, message.channel, exc)
            return
        except ChannelAddressRefused as exc:
            await self._record_failure(
                message_id, message.channel, ChannelAccountRefused(str(exc), code="PRIVATE_ADDRESS")
            )
            return
        async with self.sessions.begin() as session:
            stored = await session.get(Message, message_id)
            if stored is not None:
                record_sent(stored, receipt, self.now)
        self.result.sent += 1

    def _metadata(self, message: Message) -> dict[str, str]:
        """A webhook's event type; an email's one-click unsubscribe headers (RFC 8058), which the
        SMTP adapter sends once it copies metadata headers into the message."""
        if message.channel == WEBHOOK:
            return {"type": str((message.payload or {}).get("event"))}
        if message.channel == "email" and message.recipient:
            url = opt_out_url(self.settings, self.record.id, "email", message.recipient, self.policy.language)
            return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
        return {}

    async def _channel(self, name: str) -> Channel:
        if name not in self.channels:
            self.channels[name] = await open_channel(self.settings, self.accounts[name])
        return self.channels[name]

    async def _record_failure(self, message_id: int, channel: str, exc: ChannelError) -> None:
        async with self.sessions.begin() as session:
            message = await session.get(Message, message_id)
            account = await session.get(ChannelAccount, self.accounts[channel].id)
            if message is None or account is None:
                return
            await record_failure(session, message, account, exc, self.retry, self.now, self.result)
            self.accounts[channel].status = account.status  # later messages see a pause
        log.warning("message %s (%s): %s", message_id, channel, exc.provider_text)
