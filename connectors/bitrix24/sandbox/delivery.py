"""Outbound events of the Bitrix24 sandbox: form-encoded POSTs to the handlers bound with event.bind
and to the outgoing webhook configured in the UI, sent in the background and never retried, like the
real queue server."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlencode

import httpx

from connectors.bitrix24.sandbox.config import SandboxConfig
from connectors.bitrix24.sandbox.engine import Portal
from connectors.http import tls_context

FormPairs = list[tuple[str, str]]


class EventDelivery:
    def __init__(self, config: SandboxConfig, portal: Portal) -> None:
        self.config = config
        self.portal = portal
        # Every delivery with its outcome (GET /_sandbox/webhooks); a record's status is filled in
        # when the POST finishes.
        self.log: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._counted = 0  # deliveries counted for config.webhook_drop_percent since it was set

    # --- lifetime (the app's lifespan) ---------------------------------------------------------------

    def open(self) -> None:
        self._client = httpx.AsyncClient(timeout=10.0, verify=tls_context())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()

    # --- sending -------------------------------------------------------------------------------------

    def flush(self, base: str) -> None:
        """Send the events the portal queued since the last flush; `base` is the sandbox's public URL."""
        pending, self.portal.pending_events = self.portal.pending_events, []
        for event, data in pending:
            for url, body in self.bodies(event, data, base):
                if self._lost_on_the_way():
                    # The queue server logs a failed delivery and never resends it (no retries).
                    self.log.append({"url": url, "body": body, "status": "dropped"})
                    self.portal.stats.webhooks_failed += 1
                    self.portal.stats.changed()
                    continue
                task = asyncio.get_running_loop().create_task(self._deliver(url, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def restart_drop_pattern(self) -> None:
        """config.webhook_drop_percent changed: its pattern starts with the next delivery."""
        self._counted = 0

    def _lost_on_the_way(self) -> bool:
        """Whether the next delivery is lost (config.webhook_drop_percent of them, spread evenly:
        decided here, in event order, so a test knows which ones)."""
        percent, seen = self.config.webhook_drop_percent, self._counted
        self._counted += 1
        return (seen + 1) * percent // 100 > seen * percent // 100

    async def _deliver(self, url: str, body: str) -> None:
        record: dict[str, Any] = {"url": url, "body": body, "status": None}
        self.log.append(record)
        if self._client is None:
            raise RuntimeError("the sandbox app's lifespan has not started: no HTTP client to deliver with")
        try:
            response = await self._client.post(
                url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
            )
            record["status"] = response.status_code
            if response.is_success:
                self.portal.stats.webhooks_sent += 1
            else:
                self.portal.stats.webhooks_failed += 1
        except httpx.HTTPError as exc:  # lost, like the real queue server: no retries
            record["status"] = repr(exc)
            self.portal.stats.webhooks_failed += 1
        self.portal.stats.changed()  # a test may wait on webhooks_sent / webhooks_failed

    # --- bodies --------------------------------------------------------------------------------------

    def bodies(self, event: str, data: dict[str, Any], base: str) -> list[tuple[str, str]]:
        """(URL, form body) of every delivery one event makes."""
        ts = str(int(time.time()))
        fields = [(f"data[FIELDS][{k}]", str(v)) for k, v in data.items()]
        portal_auth = self._portal_auth(base)
        out: list[tuple[str, str]] = []
        for bound in self.portal.state.handlers:
            if bound["event"] != event:
                continue
            pairs = [
                ("event", event),
                ("event_handler_id", str(bound["id"])),
                *fields,
                ("ts", ts),
                *self._application_auth(portal_auth),
            ]
            out.append((bound["handler"], urlencode(pairs)))
        # The outgoing webhook configured in the UI cannot subscribe to ONCRMDEALMOVETOCATEGORY
        # (app only, DOCS crm/deals/events). Its body matches the real capture in docs/crm/bitrix24.md §4.
        webhook_url = self.config.webhook_url
        if webhook_url and event in self.config.webhook_events and event != "ONCRMDEALMOVETOCATEGORY":
            pairs = [
                ("event", event),
                *fields,
                ("ts", ts),
                *portal_auth,
                ("auth[application_token]", self.config.app_token),
            ]
            out.append((webhook_url, urlencode(pairs)))
        return out

    def _portal_auth(self, base: str) -> FormPairs:
        """The auth[] fields every event carries: which portal sent it and where its REST API is."""
        return [
            ("auth[domain]", self.config.domain),
            ("auth[client_endpoint]", f"{base}/rest/"),
            ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
            ("auth[member_id]", self.config.member_id),
        ]

    def _application_auth(self, portal_auth: FormPairs) -> FormPairs:
        """An application's event also carries a token of the user the handler was bound for
        (DOCS api-reference/events/index.md; docs/crm/bitrix24.md §4)."""
        token = next(iter(t for t, exp in self.portal.tokens.items() if exp > time.time()), "")
        return [
            ("auth[access_token]", token),
            ("auth[expires]", str(int(time.time()) + 3600)),
            ("auth[expires_in]", "3600"),
            ("auth[scope]", ",".join(self.config.scopes)),
            *portal_auth,
            ("auth[status]", "L"),
            ("auth[user_id]", str(self.config.webhook_user)),
            ("auth[application_token]", self.config.app_token),
        ]
