"""Configuration of the amoCRM sandbox."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class SandboxConfig:
    """One simulated amoCRM account.

    `speed` scales limits and clocks together: at speed 10 the account takes 70 requests per second,
    access tokens live 2.4 hours and webhook retries come 10 times sooner. Timestamps in payloads stay
    real unix times.
    """

    subdomain: str = "sandbox"
    account_id: int = 31_000_001
    account_name: str = "Sandbox"
    # Long-lived token of a private integration (Bearer). None: only OAuth tokens are accepted.
    token: str | None = "sandbox-long-lived-token"
    client_id: str = "00000000-0000-4000-8000-000000000001"
    client_secret: str = "sandbox-client-secret"
    redirect_uri: str = "https://funnelsync.example/amocrm/callback"
    speed: float = 1.0
    state_file: Path | None = None
    # Limits (docs/crm/amocrm.md §3): 7 requests/s per integration, 50/s for the whole account.
    requests_per_second: float = 7.0
    account_requests_per_second: float = 50.0
    # Arrival jitter (real seconds) tolerated before a 429: a client whose limiter releases requests
    # at exactly the limit sees them bunched on arrival (new connections, scheduling). The bucket
    # admits max(1, rate x speed x jitter) requests above its capacity. Half a second, because the
    # tests run client and sandbox in one Python process, where a busy machine stalls both at once.
    rate_jitter: float = 0.5
    # A bulk POST of tasks or lead notes with invalid items answers 400 (validation-errors) either
    # way; in this mode it has saved the valid items all the same. Whether the real API does is not
    # documented (FunnelSync issue #11 reports it); off = all or nothing.
    partial_bulk_saves: bool = False
    # Repeated 429s block the account (403) like the real one; the threshold is not published.
    block_after_rate_limited: int | None = 200
    # Webhooks (docs/crm/amocrm.md §7): >100 invalid answers in 2 hours, the last one invalid, disables it.
    webhook_disable_after: int = 100
    webhook_disable_window: float = 2 * 3600.0
    webhook_timeout: float = 2.0
    webhook_retries: bool = True
    # Access tokens live 24 h; authorization codes 20 minutes (both scaled by `speed`).
    access_token_lifetime: float = 86_400.0
    auth_code_lifetime: float = 1_200.0

    @property
    def host(self) -> str:
        return f"{self.subdomain}.amocrm.ru"
