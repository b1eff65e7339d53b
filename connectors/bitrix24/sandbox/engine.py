"""The emulated portal: auth, leaky bucket, operating-time accounting, batch, faults, stats."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connectors.bitrix24.sandbox import contacts, crm, deals, users
from connectors.bitrix24.sandbox.api import ApiError, Context, Result
from connectors.bitrix24.sandbox.config import SandboxConfig
from connectors.bitrix24.sandbox.querystring import parse_php_query
from connectors.bitrix24.sandbox.state import PortalClock, PortalState

HANDLERS = {**crm.HANDLERS, **deals.HANDLERS, **contacts.HANDLERS, **users.HANDLERS}
MAX_BATCH = 50
_REF = re.compile(r"\$result\[([^\]]+)\]((?:\[[^\]]*\])*)")
# Scope a method needs (DOCS api-reference/scopes/permissions.md): prefix -> scope.
_SCOPES = (("crm.", "crm"), ("tasks.", "task"), ("task.", "task"), ("user.", "user"))


def required_scope(method: str) -> str | None:
    return next((scope for prefix, scope in _SCOPES if method.startswith(prefix)), None)


@dataclass
class Fault:
    kind: str
    count: int = 1
    method: str | None = None
    seconds: float = 5.0
    # Let this many matching requests through before the fault starts: an outage that begins in the
    # middle of a client's sequence of calls (e.g. after the pipeline was created).
    after: int = 0


@dataclass
class Trigger:
    """Something a person does in the portal while a client is mid-way through its calls: once
    `method` has been executed `after` more times (batch commands count), run `action`
    (scenario.ACTIONS) with `params`. Fires once."""

    method: str
    after: int
    action: str
    params: dict[str, Any] = field(default_factory=dict)
    seen: int = 0


# What POST /_sandbox/stats/wait can wait on: counter groups and plain counters.
WAITABLE_GROUPS = ("by_method", "commands")
WAITABLE_COUNTERS = ("requests", "webhooks_sent", "webhooks_failed", "token_refreshes")


@dataclass
class Stats:
    requests: int = 0
    by_method: Counter[str] = field(default_factory=Counter)  # top-level HTTP calls
    commands: Counter[str] = field(default_factory=Counter)  # every executed method, batch included
    errors: Counter[str] = field(default_factory=Counter)  # error code -> count
    webhooks_sent: int = 0
    webhooks_failed: int = 0
    token_refreshes: int = 0
    token_uses: Counter[str] = field(default_factory=Counter)
    # Waiters of POST /_sandbox/stats/wait, woken when a counter they may be waiting on moves.
    _waiters: list[asyncio.Event] = field(default_factory=list, repr=False, compare=False)

    def changed(self) -> None:
        for waiter in self._waiters:
            waiter.set()
        self._waiters.clear()

    async def wait_until(self, at_least: dict[str, Any]) -> None:
        """Until every counter named reached its value: a group by name ({"by_method": {"batch": 1}})
        or a plain counter ({"webhooks_sent": 1}). The caller bounds it with asyncio.timeout. A test
        waits on what the CRM saw, not on a clock."""
        while not self.reached(at_least):
            waiter = asyncio.Event()
            self._waiters.append(waiter)
            await waiter.wait()

    def reached(self, at_least: dict[str, Any]) -> bool:
        for name, wanted in at_least.items():
            counter = getattr(self, name)  # a WAITABLE_GROUPS Counter or a WAITABLE_COUNTERS int
            if isinstance(wanted, dict):
                if any(counter[key] < value for key, value in wanted.items()):
                    return False
            elif counter < wanted:
                return False
        return True

    def as_json(self) -> dict[str, Any]:
        writes = sum(n for m, n in self.commands.items() if _is_write(m))
        return {
            "requests": self.requests,
            "by_method": dict(self.by_method),
            "commands": dict(self.commands),
            "write_commands": writes,
            "errors": dict(self.errors),
            "webhooks_sent": self.webhooks_sent,
            "webhooks_failed": self.webhooks_failed,
            "token_refreshes": self.token_refreshes,
            "token_uses": dict(self.token_uses),
        }


def _is_write(method: str) -> bool:
    return method.rsplit(".", 1)[-1] in ("add", "update", "delete", "bind", "unbind", "set")


@dataclass
class Auth:
    kind: str  # "webhook" | "oauth"
    user_id: int
    token: str | None = None


class Portal:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.state = PortalState.load_or_fresh(config)
        self.clock = PortalClock(config.tz_offset)
        self.stats = Stats()
        self.faults: list[Fault] = []
        self._level = 0.0
        self._level_at = time.monotonic()
        self._operating: dict[str, deque[tuple[float, float]]] = {}
        self.tokens: dict[str, float] = {config.access_token: time.time() + config.token_lifetime}
        self.refresh_token = config.refresh_token
        # The OAuth server's REST base named in token answers (rename.py moves it); None: this sandbox.
        self.server_endpoint: str | None = None
        self.pending_events: list[tuple[str, dict[str, Any]]] = []
        self.dirty = False
        self.triggers: list[Trigger] = []
        # action name -> handler(portal, params); filled by scenario.install (keeps this module free
        # of the control endpoints' imports).
        self.trigger_actions: dict[str, Callable[[Portal, dict[str, Any]], None]] = {}

    # --- context -----------------------------------------------------------------------------------

    def context(self, auth: Auth) -> Context:
        return Context(
            state=self.state,
            config=self.config,
            clock=self.clock,
            emit=lambda event, data: self.pending_events.append((event, data)),
            user_id=auth.user_id,
            auth_kind=auth.kind,
            access_token=auth.token,
        )

    # --- faults ------------------------------------------------------------------------------------

    def _take(self, matches: Callable[[Fault], bool]) -> Fault | None:
        for fault in self.faults:
            if fault.count > 0 and matches(fault):
                if fault.after > 0:  # not started yet: this request passes
                    fault.after -= 1
                    continue
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def take_command_fault(self, method: str) -> Fault | None:
        """Faults aimed explicitly at `method` also hit it as a command inside a batch."""
        return self._take(lambda f: f.method is not None and f.method.lower() == method)

    def take_fault(self, method: str) -> Fault | None:
        return self._take(lambda f: f.method is None or f.method.lower() == method)

    # --- auth --------------------------------------------------------------------------------------

    def check_webhook(self, user: str, code: str) -> Auth:
        if user != str(self.config.webhook_user) or not secrets.compare_digest(
            code, self.config.webhook_code
        ):
            raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
        return Auth("webhook", self.config.webhook_user)

    def check_token(self, token: str | None) -> Auth:
        if not token:
            raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
        expires = self.tokens.get(token)
        if expires is None:
            raise ApiError(401, "invalid_token", "The access token provided is invalid.")
        if expires <= time.time():
            raise ApiError(401, "expired_token", "The access token provided has expired.")
        self.stats.token_uses[token] += 1
        return Auth("oauth", self.config.webhook_user, token)

    def expire_tokens(self) -> None:
        self.tokens = {t: time.time() - 1 for t in self.tokens}

    def refresh(self, params: dict[str, Any], base_url: str) -> tuple[int, dict[str, Any]]:
        """oauth.bitrix.info/oauth/token/ (DOCS settings/oauth): rotate both tokens."""
        if params.get("grant_type") != "refresh_token":
            return 400, {"error": "invalid_request", "error_description": "Unsupported grant_type"}
        if (
            params.get("client_id") != self.config.client_id
            or params.get("client_secret") != self.config.client_secret
        ):
            return 401, {"error": "invalid_client", "error_description": "Invalid client credentials"}
        if params.get("refresh_token") != self.refresh_token:
            return 400, {"error": "invalid_grant", "error_description": "Invalid refresh token"}
        self.stats.token_refreshes += 1
        self.stats.changed()
        access = f"sandbox-access-{secrets.token_hex(8)}"
        self.refresh_token = f"sandbox-refresh-{secrets.token_hex(8)}"
        now = time.time()
        self.tokens[access] = now + self.config.token_lifetime
        return 200, {
            "access_token": access,
            "expires": int(now + 3600),
            "expires_in": 3600,
            "scope": "app",
            "domain": "oauth.bitrix.info",
            "server_endpoint": self.server_endpoint or f"{base_url}/rest/",
            "status": "L",
            "client_endpoint": f"{base_url}/rest/",
            "member_id": self.config.member_id,
            "user_id": self.config.webhook_user,
            "refresh_token": self.refresh_token,
        }

    # --- limits ------------------------------------------------------------------------------------

    def admit(self) -> bool:
        """Leaky bucket (DOCS limits.md): the counter drains at Y/s; a request over X gets 503."""
        now = time.monotonic()
        self._level = max(0.0, self._level - (now - self._level_at) * self.config.drain_per_second)
        self._level_at = now
        if self._level + 1 > self.config.burst:
            return False
        self._level += 1
        return True

    def operating_of(self, method: str) -> tuple[float, int]:
        """(operating seconds in the sliding window, unix time the oldest record drops out)."""
        records = self._operating.get(method)
        now = time.time()
        window = self.config.operating_window
        if records:
            while records and records[0][0] + window <= now:
                records.popleft()
        if not records:
            return 0.0, int(now + window)
        return sum(cost for _, cost in records), int(records[0][0] + window) + 1

    def charge(self, method: str, elapsed: float) -> None:
        cost = self.config.operating_cost.get(method, elapsed)
        self._operating.setdefault(method, deque()).append((time.time(), cost))

    def time_block(self, started: float, method: str | None) -> dict[str, Any]:
        finished = time.time()
        block: dict[str, Any] = {
            "start": started,
            "finish": finished,
            "duration": finished - started,
            "processing": finished - started,
            "date_start": datetime.fromtimestamp(int(started), self.clock.tzinfo).isoformat(),
            "date_finish": datetime.fromtimestamp(int(finished), self.clock.tzinfo).isoformat(),
        }
        if method is not None:
            operating, reset_at = self.operating_of(method)
            block["operating_reset_at"] = reset_at
            block["operating"] = round(operating, 4)
        return block

    # --- execution ---------------------------------------------------------------------------------

    def execute(self, method: str, params: dict[str, Any], auth: Auth) -> tuple[Result, dict[str, Any]]:
        """One method call (top-level or inside a batch): scope, operating limit, handler, time."""
        handler = HANDLERS.get(method)
        if handler is None:
            raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        scope = required_scope(method)
        if scope and scope not in self.config.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                "The request requires higher privileges than provided by the webhook token",
            )
        operating, _ = self.operating_of(method)
        if operating >= self.config.operating_limit:
            raise ApiError(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.")
        started = time.time()
        self.stats.commands[method] += 1
        self.stats.changed()
        ctx = self.context(auth)
        result = handler(ctx, params)
        self.charge(method, time.time() - started)
        if ctx.changed:
            self.dirty = True
        self._fire_triggers(method)
        return result, self.time_block(started, method)

    def _fire_triggers(self, method: str) -> None:
        for trigger in list(self.triggers):
            if trigger.method != method:
                continue
            trigger.seen += 1
            if trigger.seen >= trigger.after:
                self.triggers.remove(trigger)
                self.trigger_actions[trigger.action](self, trigger.params)
                self.dirty = True

    def call(self, method: str, params: dict[str, Any], auth: Auth) -> dict[str, Any]:
        if method == "batch":
            return self.batch(params, auth)
        result, timing = self.execute(method, params, auth)
        body: dict[str, Any] = {"result": result.value}
        if result.next is not None:
            body["next"] = result.next
        if result.total is not None:
            body["total"] = result.total
        body["time"] = timing
        return body

    def batch(self, params: dict[str, Any], auth: Auth) -> dict[str, Any]:
        """DOCS settings/how-to-call-rest-api/batch.md: <= 50 `method?query` commands, sequential,
        `$result[key][path]` references to earlier results, per-command errors in result_error."""
        started = time.time()
        cmd = params.get("cmd")
        halt = str(params.get("halt", "0")) not in ("0", "", "false", "False", "N")
        answers = _BatchAnswers()
        for key, command in _batch_commands(cmd).items():
            method, _, query = str(command).partition("?")
            method = method.strip().lower().removesuffix(".json")
            sub_params = _substitute(parse_php_query(query), answers.result)
            try:
                result, timing = self._execute_in_batch(method, sub_params, auth)
            except ApiError as exc:
                self.stats.errors[exc.code or exc.description] += 1
                answers.result_error[key] = exc.body()
                if halt:
                    break
                continue
            answers.add(key, result, timing)
        return {"result": answers.as_json(isinstance(cmd, list)), "time": self.time_block(started, None)}

    def _execute_in_batch(
        self, method: str, params: dict[str, Any], auth: Auth
    ) -> tuple[Result, dict[str, Any]]:
        """One batch command: like a top-level call, except that batch cannot nest and a fault aimed
        at the method fails only this command."""
        if method == "batch":
            raise ApiError(405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
        if self.take_command_fault(method) is not None:
            # A fault aimed at this method fails the command inside the batch, the way a
            # portal reports one command's error in result_error while the others run.
            raise ApiError(500, "INTERNAL_SERVER_ERROR", f"Internal error in {method} (injected)")
        return self.execute(method, params, auth)


def _batch_commands(cmd: Any) -> dict[str, Any]:
    """Batch commands by key: `cmd` given as a list is keyed by position."""
    if isinstance(cmd, list):
        commands = {str(i): c for i, c in enumerate(cmd)}
    elif isinstance(cmd, dict):
        commands = {str(k): c for k, c in cmd.items()}
    else:
        raise ApiError(400, "INVALID_ARG_VALUE", "Parameter 'cmd' must be array.")
    if len(commands) > MAX_BATCH:
        raise ApiError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
    return commands


@dataclass
class _BatchAnswers:
    """What a batch answers, per command key in command order."""

    result: dict[str, Any] = field(default_factory=dict)
    result_error: dict[str, Any] = field(default_factory=dict)
    result_total: dict[str, Any] = field(default_factory=dict)
    result_next: dict[str, Any] = field(default_factory=dict)
    result_time: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, result: Result, timing: dict[str, Any]) -> None:
        self.result[key] = result.value
        self.result_time[key] = timing
        if result.total is not None:
            self.result_total[key] = result.total
        if result.next is not None:
            self.result_next[key] = result.next

    def as_json(self, as_list: bool) -> dict[str, Any]:
        """`cmd` given as a list answers lists; empty ones come back as [] not {} (PHP arrays)."""

        def shape(values: dict[str, Any]) -> Any:
            if not values:
                return []
            return list(values.values()) if as_list else values

        return {
            "result": shape(self.result),
            "result_error": shape(self.result_error),
            "result_total": shape(self.result_total),
            "result_next": shape(self.result_next),
            "result_time": shape(self.result_time),
        }


def _resolve(results: dict[str, Any], key: str, path: str) -> str:
    node: Any = results.get(key)
    for part in re.findall(r"\[([^\]]*)\]", path):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = None
        if node is None:
            break
    if node is None or isinstance(node, dict | list):
        # Still unverified: what the portal substitutes for a reference that does not resolve; we use an
        # empty string, and the client never relies on it (it stops at the first short page).
        return ""
    if isinstance(node, bool):
        return "1" if node else ""
    return str(node)


def _substitute(value: Any, results: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, results) for v in value]
    if isinstance(value, str) and "$result[" in value:
        return _REF.sub(lambda m: _resolve(results, m.group(1), m.group(2)), value)
    return value
