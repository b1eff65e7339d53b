"""The fixed sets of values stored in the message tables, apart from the models so that pure code can
name them without importing the database layer."""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    """Where a message stands. queued -> sending -> sent; or failed (retried at next_attempt_at) ->
    ... -> dead. `skipped` is final and sends nothing: the contact opted out, has no address on any
    of the action's channels, or the automation's channel is paused for good (last_error says which).
    A queued message may wait for quiet hours or the daily limit: next_attempt_at says until when."""

    QUEUED = "queued"
    SENDING = "sending"  # in a request now, or in one whose answer never came back
    FAILED = "failed"
    SENT = "sent"
    DEAD = "dead"
    SKIPPED = "skipped"


class ChannelAccountStatus(StrEnum):
    """A channel account is paused when the provider refused the account itself (bad credentials,
    no money, an unapproved sender): its messages wait, queued, until someone resumes it."""

    ACTIVE = "active"
    PAUSED = "paused"


class OptOutSource(StrEnum):
    LINK = "link"  # the client opened the opt-out link in a message
    COMMAND = "command"  # the client sent /stop (Telegram) or STOP
    UNREACHABLE = "unreachable"  # the provider said the recipient cannot be reached there any more
    OPERATOR = "operator"  # a person added it (API/CLI)


MESSAGE_CHANNELS = ("email", "telegram", "sms", "webhook")
