"""Email over SMTP: one MIME message per OutgoingMessage, sent with aiosmtplib on a connection of its own.

The Message-ID is derived from the outbox key and the sender's domain, so a message the outbox sends
again (after a timeout that hid a delivery) carries the same Message-ID and mail systems and people
can recognise the repeat. SMTP replies map onto the channel taxonomy by their class: 4xx is "try
later" (greylisting, a full queue), 5xx is "never" (RFC 5321 §4.2.1); a 5xx refusal of the recipient
itself means the address cannot be reached.
"""

from __future__ import annotations

import hashlib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parseaddr

import aiosmtplib

from connectors.channels.base import (
    ChannelAccountRefused,
    ChannelError,
    OutgoingMessage,
    PermanentChannelError,
    Receipt,
    RecipientUnreachable,
    TemporaryChannelError,
)


def message_id_for(key: str, sender: str) -> str:
    """`<hash-of-key@sender-domain>`: the same outbox key always gives the same Message-ID. The key
    is hashed because it may hold characters a msg-id cannot (RFC 5322 §3.6.4)."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<funnelsync.{digest}@{_sender_domain(sender)}>"


def _sender_domain(sender: str) -> str:
    address = parseaddr(sender)[1]
    domain = address.rpartition("@")[2] if "@" in address else ""
    if not domain:
        raise ValueError(f"sender {sender!r} is not an email address with a domain")
    # A msg-id is ASCII: an internationalised domain goes in its punycode form.
    return domain.encode("idna").decode("ascii").lower()


UNSUBSCRIBE_HEADERS = ("List-Unsubscribe", "List-Unsubscribe-Post")


def build_email(message: OutgoingMessage, sender: str, *, now: datetime | None = None) -> EmailMessage:
    """The MIME message: UTF-8 text body, From/To/Subject/Date/Message-ID. Header values are encoded
    by the email package (RFC 2047), so Cyrillic subjects and names survive any relay."""
    mime = EmailMessage()
    mime["From"] = sender
    mime["To"] = message.recipient
    if message.subject is not None:
        mime["Subject"] = message.subject
    mime["Date"] = now or datetime.now(UTC)
    mime["Message-ID"] = message_id_for(message.key, sender)
    # RFC 8058 one-click unsubscribe: the opt-out link the service made for this recipient.
    for header in UNSUBSCRIBE_HEADERS:
        if value := message.metadata.get(header):
            mime[header] = value
    mime.set_content(message.text, charset="utf-8")
    return mime


def _recipient_error(recipient: str) -> str | None:
    """Why `recipient` is not one mailbox address, or None when it is. Only the shape is checked
    (local@domain, nothing an SMTP command line cannot carry): a non-ASCII address is fine when the
    server speaks SMTPUTF8, and only the server knows whether the mailbox exists."""
    if "\r" in recipient or "\n" in recipient:
        return f"{recipient!r} is not an email address (a line break would start another header)"
    address = parseaddr(recipient)[1]
    local, _, domain = address.rpartition("@")
    if not local or not domain or any(c.isspace() or c in '<>"' for c in address):
        return f"{recipient!r} is not an email address"
    return None


class SmtpChannel:
    """Sends each message over its own SMTP session (no pooling: automations send a few messages a
    minute, and a fresh session never meets a connection the server has dropped)."""

    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        sender: str,
        use_tls: bool = False,
        start_tls: bool | None = None,
        timeout: float = 30,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        _sender_domain(sender)  # a sender without a domain cannot name its messages: fail at setup
        self.host = host
        self.port = port
        self.sender = sender
        self.use_tls = use_tls
        self.start_tls = start_tls
        self.timeout = timeout
        self._username = username
        self._password = password
        self._tls_context = tls_context

    async def send(self, message: OutgoingMessage) -> Receipt:
        problem = _recipient_error(message.recipient)
        if problem:
            raise RecipientUnreachable(problem, code="BAD_ADDRESS")
        mime = build_email(message, self.sender)
        try:
            await aiosmtplib.send(
                mime,
                hostname=self.host,
                port=self.port,
                username=self._username,
                password=self._password,
                use_tls=self.use_tls,
                start_tls=self.start_tls,
                timeout=self.timeout,
                tls_context=self._tls_context,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._channel_error(exc) from exc
        return Receipt(provider_id=str(mime["Message-ID"]))

    async def aclose(self) -> None:
        """Nothing held between sends."""

    def _channel_error(self, exc: aiosmtplib.SMTPException | OSError) -> ChannelError:
        where = f"SMTP server {self.host}:{self.port}"
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            return _refused_error(exc.recipients)
        if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
            return _refused_error([exc])
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return _reply_error(exc.code, exc.message, f"{where} answered")
        if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
            return TemporaryChannelError(f"{where} timed out: {exc}", code="TIMEOUT")
        if isinstance(exc, aiosmtplib.SMTPNotSupported | ssl.SSLCertVerificationError):
            # The server lacks what the settings ask for (STARTTLS, AUTH) or its certificate is not
            # trusted: every send fails the same way until someone changes the settings.
            return PermanentChannelError(f"{where}: {exc}", code="NOT_SUPPORTED")
        # Connection refused, reset, dropped: the server may be back in a minute.
        return TemporaryChannelError(f"{where} could not be reached: {exc}", code="NETWORK")


def _reply_error(code: int, text: str, context: str) -> ChannelError:
    """A reply code's class decides: 4xx transient, anything else permanent (535 bad credentials,
    554 refused content)."""
    provider_text = f"{context} {code} {text}".strip()
    if 400 <= code < 500:
        return TemporaryChannelError(provider_text, code=str(code))
    if code in (530, 534, 535):  # authentication required / too weak / credentials invalid (RFC 4954)
        return ChannelAccountRefused(provider_text, code=str(code))
    return PermanentChannelError(provider_text, code=str(code))


def _refused_error(refusals: list[aiosmtplib.SMTPRecipientRefused]) -> ChannelError:
    """One message has one recipient, so one refusal; a 5xx one (550 mailbox unavailable, 553 bad
    address) means this address cannot be reached, a 4xx one (450 mailbox busy) may pass later."""
    texts = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in refusals)
    codes = [r.code for r in refusals]
    first = str(codes[0]) if codes else None
    if codes and all(400 <= code < 500 for code in codes):
        return TemporaryChannelError(f"recipient refused for now: {texts}", code=first)
    return RecipientUnreachable(f"recipient refused: {texts}", code=first)
