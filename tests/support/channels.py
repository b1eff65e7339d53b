"""The message-channel sandboxes on real loopback ports for tests: an SMTP server that keeps what it
receives and a Telegram Bot API emulator, each with its control API, and channels pointed at them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from connectors.channels.email import SmtpChannel
from connectors.channels.sandbox.email import EmailSandboxConfig, Mailbox, create_email_sandbox_app
from connectors.channels.sandbox.telegram import TelegramSandboxConfig, create_telegram_sandbox_app
from connectors.channels.telegram import TelegramChannel
from connectors.http import RetryPolicy
from tests.support import web
from tests.support.server import serve_asgi

SENDER = "FunnelSync <noreply@funnelsync.test>"
# Flood waits the sandbox asks for (1 s and up) stay under max_delay, so a test sees them sat out;
# the sleep itself is the test's to replace.
FAST_TELEGRAM_RETRY = RetryPolicy(attempts=3, max_elapsed=60, base_delay=0.01, max_delay=5.0)


class _ControlApi:
    url: str

    def control(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        response = web.request(method, f"{self.url}{path}", json=json, params=params or None, timeout=30)
        response.raise_for_status()
        return response.json()

    def fault(self, kind: str, **spec: Any) -> None:
        self.control("POST", "/_sandbox/faults", {"kind": kind, **spec})

    def clear_faults(self) -> None:
        self.control("DELETE", "/_sandbox/faults")

    def reset(self) -> None:
        self.control("POST", "/_sandbox/reset")


@dataclass
class SmtpSandbox(_ControlApi):
    url: str  # the control API
    smtp_host: str
    smtp_port: int

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.control("GET", "/_sandbox/messages", **({"to": to} if to else {}))[
            "messages"
        ]
        return found

    def channel(self, **options: Any) -> SmtpChannel:
        options.setdefault("sender", SENDER)
        options.setdefault("timeout", 10)
        return SmtpChannel(self.smtp_host, self.smtp_port, **options)


@contextmanager
def running_smtp_sandbox(**options: Any) -> Iterator[SmtpSandbox]:
    """An SMTP sandbox on a free port (SMTP and control API both), for the `with` block."""
    config = EmailSandboxConfig(**options)
    app = create_email_sandbox_app(config)
    with serve_asgi(app) as url:
        mailbox: Mailbox = app.state.mailbox
        assert mailbox.smtp_port is not None, "the SMTP listener starts with the app"
        yield SmtpSandbox(url, config.smtp_host, mailbox.smtp_port)


@dataclass
class TelegramSandbox(_ControlApi):
    url: str
    token: str

    def messages(self, chat_id: int | str | None = None) -> list[dict[str, Any]]:
        params = {} if chat_id is None else {"chat_id": str(chat_id)}
        found: list[dict[str, Any]] = self.control("GET", "/_sandbox/messages", **params)["messages"]
        return found

    def calls(self) -> dict[str, int]:
        calls: dict[str, int] = self.control("GET", "/_sandbox/stats")["calls"]
        return calls

    def user_writes(self, chat_id: int, text: str, first_name: str = "Client", **user: str) -> dict[str, Any]:
        """A user sends the bot a message; the Update it created (and the webhook's answer).
        `user`: the sender's optional username and language_code."""
        body = {"chat_id": chat_id, "text": text, "first_name": first_name, **user}
        result: dict[str, Any] = self.control("POST", "/_sandbox/updates", body)
        return result

    def user_presses(
        self, chat_id: int, data: str, first_name: str = "Client", **user: str
    ) -> dict[str, Any]:
        """The user presses the inline button with this callback_data on the bot's latest message
        offering it; the callback_query Update it created (and the webhook's answer)."""
        body = {"chat_id": chat_id, "data": data, "first_name": first_name, **user}
        result: dict[str, Any] = self.control("POST", "/_sandbox/callbacks", body)
        return result

    def callback_answers(self) -> list[str]:
        answered: list[str] = self.control("GET", "/_sandbox/callback_answers")["answered"]
        return answered

    def channel(self, **options: Any) -> TelegramChannel:
        options.setdefault("retry", FAST_TELEGRAM_RETRY)
        options.setdefault("timeout", 10)
        return TelegramChannel(options.pop("token", self.token), base_url=self.url, **options)


@contextmanager
def running_telegram_sandbox(**options: Any) -> Iterator[TelegramSandbox]:
    config = TelegramSandboxConfig(**options)
    with serve_asgi(create_telegram_sandbox_app(config)) as url:
        yield TelegramSandbox(url, config.token)
