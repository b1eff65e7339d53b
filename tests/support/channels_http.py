"""The SMS.ru sandbox and the webhook receiver sandbox served on real loopback ports for the
channel tests, with a small client for their /_sandbox control endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from connectors.channels.base import OutgoingMessage
from connectors.channels.sandbox.sms import SmsSandboxConfig, create_sms_sandbox_app
from connectors.channels.sandbox.webhook_receiver import create_webhook_receiver_app
from connectors.channels.webhooks import new_secret
from connectors.http import RetryPolicy
from tests.support import web
from tests.support.server import serve_asgi

# Retries inside SmsRuChannel.send at test speed: milliseconds, not seconds.
FAST_SMS_RETRY = RetryPolicy(attempts=3, max_elapsed=5.0, base_delay=0.01, max_delay=0.02)


@dataclass
class RunningSandbox:
    """A sandbox on a real port: its base URL and its control endpoints."""

    url: str

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = web.request(method, f"{self.url}/_sandbox{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def fault(self, **spec: Any) -> None:
        self.control("POST", "/faults", spec)

    def reset(self) -> None:
        self.control("POST", "/reset")


@dataclass
class RunningSmsSandbox(RunningSandbox):
    api_id: str

    def messages(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", "/messages")
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "/stats")
        return result


@dataclass
class RunningReceiver(RunningSandbox):
    secret: str

    @property
    def hook_url(self) -> str:
        return f"{self.url}/hooks/funnelsync"

    def deliveries(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", "/deliveries")
        return result

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self.control("GET", "/stats")
        return result


@contextmanager
def running_sms_sandbox(**config: Any) -> Iterator[RunningSmsSandbox]:
    sandbox_config = SmsSandboxConfig(**config)
    with serve_asgi(create_sms_sandbox_app(sandbox_config)) as url:
        yield RunningSmsSandbox(url=url, api_id=sandbox_config.api_id)


@contextmanager
def running_webhook_receiver(secret: str | None = None) -> Iterator[RunningReceiver]:
    secret = secret or new_secret()
    with serve_asgi(create_webhook_receiver_app(secret)) as url:
        yield RunningReceiver(url=url, secret=secret)


def message(
    key: str = "cmd-1", recipient: str = "+7 (925) 507-06-02", text: str = "Hello", **metadata: str
) -> OutgoingMessage:
    return OutgoingMessage(key=key, recipient=recipient, text=text, metadata=dict(metadata))
