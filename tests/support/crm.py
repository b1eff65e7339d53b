"""One test harness over both CRM sandboxes: start one, make connectors and connection records for
it, count its write requests, inject faults. Tests that must hold for both CRMs use `crm_sandbox`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from app.config import Settings
from app.connections import service as connections
from app.connections.models import Connection
from connectors.amocrm.client import AmoCRMConnector
from connectors.amocrm.descriptor import AmoCRMConnectionCreate
from connectors.base import CRMConnector
from connectors.bitrix24.client import Bitrix24Connector
from connectors.bitrix24.descriptor import Bitrix24ConnectionCreate
from connectors.http import AMOCRM_DEFAULT, BITRIX24_STANDARD, RetryPolicy
from tests.connectors.amocrm import conftest as amo
from tests.connectors.bitrix24 import conftest as b24

FAST_RETRY = RetryPolicy(attempts=3, max_elapsed=20, base_delay=0.01, max_delay=0.05)
# The same as service settings: the service's connectors retry a failing call this fast too, so a
# test of an outage waits milliseconds, not the two minutes a real deployment allows.
FAST_RETRY_SETTINGS = {
    "crm_retry_attempts": FAST_RETRY.attempts,
    "crm_retry_max_seconds": FAST_RETRY.max_elapsed,
    "crm_retry_base_delay_seconds": FAST_RETRY.base_delay,
    "crm_retry_max_delay_seconds": FAST_RETRY.max_delay,
}
# ... and as the environment of a CLI command.
FAST_RETRY_ENV = {f"FUNNELSYNC_{key.upper()}": str(value) for key, value in FAST_RETRY_SETTINGS.items()}
APP_TOKEN = "test-application-token"
_keys = itertools.count()


@dataclass
class CRMSandbox:
    crm: str
    box: Any  # the CRM's own sandbox harness (tests/connectors/<crm>/conftest.py)

    @property
    def url(self) -> str:
        return str(self.box.url)

    def connector(self, **options: Any) -> CRMConnector:
        """A connector at the sandbox's (sped-up) limits; each gets its own rate bucket."""
        key = f"test:{self.crm}:{next(_keys)}"
        options.setdefault("retry", FAST_RETRY)
        if self.crm == "bitrix24":
            options.setdefault("rate", BITRIX24_STANDARD.scaled(self.box.config.speed))
            return Bitrix24Connector(webhook_url=self.box.webhook_url, account_key=key, **options)
        options.setdefault("rate", AMOCRM_DEFAULT.scaled(self.box.config.speed))
        return AmoCRMConnector(
            self.box.config.subdomain,
            token=self.box.config.token,
            base_url=self.url,
            account_key=key,
            **options,
        )

    def connection(self, settings: Settings, name: str | None = None) -> Connection:
        """A Connection row (not yet added) pointing at this sandbox."""
        name = name or self.crm
        data: Bitrix24ConnectionCreate | AmoCRMConnectionCreate
        if self.crm == "bitrix24":
            data = Bitrix24ConnectionCreate(
                name=name, crm="bitrix24", webhook_url=self.box.webhook_url, app_token=SecretStr(APP_TOKEN)
            )
        else:
            data = AmoCRMConnectionCreate(
                name=name,
                crm="amocrm",
                subdomain=self.box.config.subdomain,
                token=SecretStr(self.box.config.token),
                base_url=self.url,
            )
        return connections.build_record(settings, data, None)

    def writes(self) -> int:
        stats = self.box.stats()
        return int(stats["write_commands"] if self.crm == "bitrix24" else stats["writes"])

    def reset_stats(self) -> None:
        self.box.reset_stats()

    def fail_next(self, step: str, count: int = 1, kind: str = "http_500") -> None:
        """Make the CRM fail the next `count` calls of a provisioning step ("fields", "stages")."""
        method = {
            ("bitrix24", "fields"): "crm.deal.userfield.add",
            ("bitrix24", "stages"): "crm.status.add",
            ("amocrm", "fields"): "POST /api/v4/leads/custom_fields",
            ("amocrm", "stages"): "PATCH /api/v4/leads/pipelines/{pipeline_id}/statuses/{status_id}",
        }[(self.crm, step)]
        self.box.fault(kind, count=count, method=method)

    # --- a person using the CRM (user-action endpoints: the CRM posts its webhooks) -------------

    def create_deal(self, title: str, pipeline_id: str, stage_id: str) -> str:
        if self.crm == "bitrix24":
            return str(self.box.create_deal(TITLE=title, CATEGORY_ID=int(pipeline_id), STAGE_ID=stage_id))
        return str(
            self.box.create_lead(name=title, pipeline_id=int(pipeline_id), status_id=int(stage_id))["id"]
        )

    def move_deal(self, deal_id: str, pipeline_id: str, stage_id: str) -> None:
        if self.crm == "bitrix24":
            self.box.control("POST", f"/_sandbox/deals/{deal_id}", {"fields": {"STAGE_ID": stage_id}})
        else:
            body = {"status_id": int(stage_id), "pipeline_id": int(pipeline_id)}
            self.box.control("POST", f"/_sandbox/deals/{deal_id}/move", body)

    def clear_faults(self) -> None:
        self.box.control("DELETE", "/_sandbox/faults")


@contextmanager
def crm_sandbox(crm: str, **options: Any) -> Iterator[CRMSandbox]:
    if crm == "bitrix24":
        options.setdefault("app_token", APP_TOKEN)
        with b24.running_sandbox(**options) as box:
            # Events name the portal the client calls, as on a real portal.
            box.config.domain = box.url.split("://", 1)[1]
            yield CRMSandbox(crm, box)
    else:
        # amoCRM gives a webhook 2 s; here the receiver shares one Python process (and, in CI, two
        # busy cores) with the sandbox and the test, so a slow moment would read as a refused hook.
        # Tests about the 2 s budget itself build their sandbox with it.
        options.setdefault("webhook_timeout", 30.0)
        with amo.running_sandbox(**options) as box:
            yield CRMSandbox(crm, box)


def settings_for(data_dir: Any, database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        api_token=SecretStr("test-token-1234567890"),
        secret_key=SecretStr("7sGqz8pM5Y2Jw8m3b7yS0gR5tW1vN9cX4eK6hL2dQ0A="),
        public_url="http://127.0.0.1:9",
        scheduler_enabled=False,
        allow_private_crm=True,  # the sandboxes run on 127.0.0.1
        **FAST_RETRY_SETTINGS,
    )
