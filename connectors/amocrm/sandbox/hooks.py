"""Webhook delivery in amoCRM's wire format, from background tasks with their own httpx client.

Format (docs/crm/amocrm.md §7): x-www-form-urlencoded, PHP-style nested keys, old v2 field names, every
value a string; one POST carries every lead event of one change set, grouped by kind.
Delivery (same section): a 2xx within 2 s is success. Otherwise the hook is retried after 5 and 15
minutes, and for 499/5xx answers twice more (15 minutes, 1 hour), all scaled by `speed`. More than
`webhook_disable_after` invalid answers within 2 hours, the last one invalid, disables the
destination: GET /api/v4/webhooks then shows `disabled: true`, and nothing more is sent to it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from typing import Any
from urllib.parse import urlencode

import httpx

from connectors.amocrm.sandbox.state import SandboxState
from connectors.http import tls_context

RETRY_AFTER = (300.0, 900.0)  # for every failed answer
RETRY_AFTER_5XX = (900.0, 3600.0)  # in addition, for 499 and 5xx answers

Pairs = list[tuple[str, str]]


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def lead_pairs(state: SandboxState, lead: dict[str, Any], kind: str, old: dict[str, Any] | None) -> Pairs:
    """One lead's keys as amoCRM sends them; a key `a][0][b` becomes `leads[kind][i][a][0][b]`."""
    if kind == "delete":
        return [
            ("id", _s(lead["id"])),
            ("status_id", _s(lead["status_id"])),
            ("pipeline_id", _s(lead["pipeline_id"])),
        ]
    pairs: Pairs = [
        ("id", _s(lead["id"])),
        ("name", _s(lead["name"])),
        ("status_id", _s(lead["status_id"])),
    ]
    if old is not None and kind in ("update", "status"):
        pairs.append(("old_status_id", _s(old["status_id"])))
        if kind == "status" and old["pipeline_id"] != lead["pipeline_id"]:
            pairs.append(("old_pipeline_id", _s(old["pipeline_id"])))
    pairs += [
        ("price", _s(lead["price"])),
        ("responsible_user_id", _s(lead["responsible_user_id"])),
    ]
    if old is not None and kind == "responsible":
        pairs.append(("old_responsible_user_id", _s(old["responsible_user_id"])))
    pairs += [
        ("last_modified", _s(lead["updated_at"])),
        ("modified_user_id", _s(lead["updated_by"])),
        ("created_user_id", _s(lead["created_by"])),
        ("date_create", _s(lead["created_at"])),
        ("pipeline_id", _s(lead["pipeline_id"])),
    ]
    if lead.get("loss_reason_id"):
        pairs.append(("loss_reason_id", _s(lead["loss_reason_id"])))
    pairs.append(("account_id", _s(lead["account_id"])))
    for i, cf in enumerate(lead.get("custom_fields_values") or []):
        prefix = f"custom_fields][{i}"
        pairs.append((f"{prefix}][id", _s(cf["field_id"])))
        pairs.append((f"{prefix}][name", _s(cf.get("field_name"))))
        for j, value in enumerate(cf.get("values") or []):
            if cf.get("field_type") in ("date", "date_time", "birthday"):
                pairs.append((f"{prefix}][values][{j}", _s(value.get("value"))))  # dates: no `value` key
                continue
            pairs.append((f"{prefix}][values][{j}][value", _s(value.get("value"))))
            if value.get("enum_id") is not None:
                pairs.append((f"{prefix}][values][{j}][enum", _s(value["enum_id"])))
    pairs += [("created_at", _s(lead["created_at"])), ("updated_at", _s(lead["updated_at"]))]
    return pairs


class WebhookDispatcher:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.client: httpx.AsyncClient | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.invalid: dict[int, deque[float]] = {}
        self.stats: Counter[str] = Counter()
        self.posts: deque[dict[str, Any]] = deque(maxlen=1000)

    async def start(self) -> None:
        self.client = httpx.AsyncClient(
            timeout=self.state.config.webhook_timeout, follow_redirects=False, verify=tls_context()
        )

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    def emit(self, events: list[tuple[str, dict[str, Any], dict[str, Any] | None]]) -> None:
        """Queue one POST per enabled destination with the events it subscribed to.
        `events`: (kind, lead after the change, lead before it)."""
        if not events:
            return
        for hook in self.state.data["webhooks"]:
            if hook["disabled"]:
                continue
            wanted = [e for e in events if f"{e[0]}_lead" in hook["settings"]]
            if wanted:
                self._spawn(self._deliver(hook["id"], self._body(wanted), 1))

    def _body(self, events: list[tuple[str, dict[str, Any], dict[str, Any] | None]]) -> str:
        pairs: Pairs = []
        index: Counter[str] = Counter()
        for kind, lead, old in events:
            i = index[kind]
            index[kind] += 1
            for key, value in lead_pairs(self.state, lead, kind, old):
                pairs.append((f"leads[{kind}][{i}][{key}]", value))
        cfg = self.state.config
        pairs += [
            ("account[subdomain]", cfg.subdomain),
            ("account[id]", str(cfg.account_id)),
            ("account[_links][self]", f"https://{cfg.host}"),
        ]
        return urlencode(pairs)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _deliver(self, hook_id: int, body: str, attempt: int, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay / self.state.config.speed)
        hook = next((h for h in self.state.data["webhooks"] if h["id"] == hook_id), None)
        if hook is None or hook["disabled"] or self.client is None:
            return
        code = 0
        try:
            response = await self.client.post(
                hook["destination"],
                content=body.encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "User-Agent": "amoCRM-Webhooks/3.0",
                },
            )
            code = response.status_code
        except httpx.HTTPError:
            code = 0
        ok = 100 <= code <= 299
        self.stats["delivered" if ok else "failed"] += 1
        self.posts.append({"hook_id": hook_id, "attempt": attempt, "status": code, "body": body})
        if ok:
            return
        self._record_invalid(hook)
        if hook["disabled"] or not self.state.config.webhook_retries:
            return
        schedule = RETRY_AFTER + (RETRY_AFTER_5XX if code == 499 or code >= 500 else ())
        if attempt <= len(schedule):
            self._spawn(self._deliver(hook_id, body, attempt + 1, schedule[attempt - 1]))

    def _record_invalid(self, hook: dict[str, Any]) -> None:
        cfg = self.state.config
        now = self.state.clock()
        times = self.invalid.setdefault(hook["id"], deque())
        times.append(now)
        while times and times[0] < now - cfg.webhook_disable_window:
            times.popleft()
        # The last answer was invalid (we are handling it) and the count is over the limit.
        if len(times) > cfg.webhook_disable_after:
            hook["disabled"] = True
            hook["updated_at"] = self.state.now()
            self.stats["disabled"] += 1
