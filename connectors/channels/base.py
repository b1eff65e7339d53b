"""The shape every channel shares: one message to one recipient, a receipt, and the error taxonomy
the outbox needs (retry later, or never: the recipient cannot be reached this way)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to one recipient. `key` is the outbox command's idempotency key: channels that
    can carry it (an email's Message-ID, a webhook's id) do, so a receiver can drop a repeat."""

    key: str
    recipient: str  # an email address, a Telegram chat id, a phone number in international format
    text: str
    subject: str | None = None  # email only
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Receipt:
    """The provider accepted the message: its id for it, when it gives one."""

    provider_id: str | None = None


class ChannelError(Exception):
    """A send failed. `provider_text` is what the provider said, for the operator."""

    def __init__(self, provider_text: str, *, code: str | None = None) -> None:
        super().__init__(provider_text)
        self.provider_text = provider_text
        self.code = code


class TemporaryChannelError(ChannelError):
    """Try again later (timeouts, 5xx, rate limits). `retry_after`: seconds, when the provider said."""

    def __init__(self, provider_text: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(provider_text, code=code)
        self.retry_after = retry_after


class PermanentChannelError(ChannelError):
    """Sending this again would fail the same way (bad recipient, refused content, bad credentials)."""


class ChannelAccountRefused(PermanentChannelError):
    """The provider refuses our account, not this message (bad credentials, no money, an unapproved
    sender name): every message would fail the same way until a person fixes the account, so the
    service pauses the channel instead of dead-lettering message after message."""


class RecipientUnreachable(PermanentChannelError):
    """The recipient cannot be reached on this channel any more (a bot blocked by the user, a number
    that cannot receive SMS): the service records it so it stops trying this contact here."""


class Channel(Protocol):
    name: str  # "email", "telegram", "sms", "webhook"

    async def send(self, message: OutgoingMessage) -> Receipt: ...

    async def aclose(self) -> None: ...
