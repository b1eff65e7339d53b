"""Sandbox configuration: what a fresh portal looks like and how fast its clocks run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEAL_EVENTS = ("ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE")


@dataclass
class SandboxConfig:
    """One emulated portal.

    `speed` scales every clock together: the leaky bucket drains `speed` times faster, the operating
    window (600 s) and token lifetime (3600 s) pass `speed` times faster. Reported numbers
    (`operating`, `expires_in`) stay in portal seconds, timestamps are real unix time.
    """

    webhook_user: int = 1
    # The user the simulation endpoints act as ("a manager in the UI"): not the integration's user,
    # so echo filters that compare MODIFY_BY_ID with the webhook user see a human change.
    ui_user: int = 7
    webhook_code: str = "sandboxwebhookcode1"
    plan: Literal["standard", "enterprise"] = "standard"
    speed: float = 1.0
    # Outgoing webhook configured in the portal UI (deal add/update/delete only, like the real one).
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = DEAL_EVENTS
    # Percent of outbound event deliveries lost on the way (our receiver down, a network fault). The
    # real queue server never resends a failed event (DOCS api-reference/events/index.md: "will not
    # resend anything"), so a lost one is simply never seen. Deterministic: spread evenly over the
    # deliveries counted from when the option was set (30 drops the 4th, 7th and 10th of every 10).
    webhook_drop_percent: int = 0
    app_token: str = "sandboxapplicationtoken0000001"
    member_id: str = "a223c6b3710f85df22e9377d6c4f7553"
    domain: str = "sandbox.bitrix24.test"
    state_file: str | None = None
    # Base URL clients reach this sandbox at (auth[client_endpoint] in events, token responses);
    # learnt from the first request when not given.
    public_url: str | None = None
    # OAuth application (local app) credentials and its current tokens.
    client_id: str = "local.sandbox0000000001"
    client_secret: str = "sandboxclientsecret"
    access_token: str = "sandbox-access-token-0"
    refresh_token: str = "sandbox-refresh-token-0"
    scopes: tuple[str, ...] = ("crm", "task", "user")
    # Operating-time limit per method (portal seconds within a 10-minute sliding window).
    operating_limit: float = 480.0
    # Simulated execution seconds charged per call of a method (tests and benchmarks); methods not
    # listed are charged their real execution time, like the cloud does.
    operating_cost: dict[str, float] = field(default_factory=dict)
    tz_offset: str = "+03:00"

    @property
    def drain_per_second(self) -> float:
        return (5.0 if self.plan == "enterprise" else 2.0) * self.speed

    @property
    def burst(self) -> int:
        return 250 if self.plan == "enterprise" else 50

    @property
    def operating_window(self) -> float:
        """Real seconds of the 10-minute operating window."""
        return 600.0 / self.speed

    @property
    def token_lifetime(self) -> float:
        """Real seconds an access token lives (1 hour of portal time)."""
        return 3600.0 / self.speed
