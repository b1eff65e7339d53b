"""AmoCRMConnector: the CRMConnector port over amoCRM / Kommo API v4.

Every request goes through ThrottledClient (7 requests/s per account by default, configurable) and
with_retries (transport.py). Bulk writes are packed 50 items per request (amoCRM recommends ≤ 50),
each item carries `request_id` = its index in the request so errors map back to items.

Verified (amocrm/amocrm-api-php source):
- Statuses: created by POST of an array, answered in `_embedded.statuses` matched by `request_id`;
  changed only one at a time (PATCH .../statuses/{id}); deleted one at a time (DELETE, 204).
- Webhooks: POST /api/v4/webhooks answers with the webhook object itself (no `_embedded`);
  unsubscribe is DELETE /api/v4/webhooks with a {"destination": ...} body.
- AmoCRMApiRequest::checkHttpStatus: one refresh and resend after 401; 204 = no content; a 400
  with `validation-errors` fails the whole call. Issue #115 shows the body, request_id "0" when
  the caller sent none.
- CustomFieldModel::toApi sends `type` on every update; required_statuses items are
  {status_id, pipeline_id}.
- NotesFilter knows only id, note_type and updated_at (Kommo "notes by entity type" documents the
  same): notes of given deals are read per deal, GET /api/v4/leads/{id}/notes.
- Leads ?with=contacts carry `_embedded.contacts` [{id, is_main}]; POST /api/v4/leads takes
  `_embedded.contacts` [{id}]; contacts' phones/e-mails are the PHONE/EMAIL multitext fields
  (docs/crm/amocrm.md §8). There is no Telegram field: `telegram_field` names one.
Still unverified (no source found; built to docs/crm/amocrm.md and kept visible in the sandbox):
- whether a bulk create answered 400 saved its valid items: no doc says either way, issue #11
  reports it, so the valid tasks/notes are looked up by marker before any is resent (_bulk_chunk;
  the sandbox's `partial_bulk_saves` mode); whether a 429 ever carries Retry-After (none is
  documented, amocrm-api-php #526 asks for it): we wait at least one second either way;
- the exact texts of the 50-pipeline,
  100-status and colour errors; whether field codes must be upper case; whether PATCH /leads
  enforces required_statuses (FunnelSync does not rely on it); the webhook retry table and whether
  changes made through the API are echoed as webhooks (the sandbox does both); the server-side
  sort normalisation reported by a third party (not simulated: the sandbox keeps the sort sent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from connectors.amocrm import mapping
from connectors.amocrm.oauth import LongLivedAuth, OAuthApp, OAuthAuth, exchange_code
from connectors.amocrm.transport import (
    ItemErrors,
    Transport,
    describe,
    rate_window,
    reset_account_block,
)
from connectors.base import (
    MAX_BATCH,
    AccountInfo,
    BatchTooLarge,
    Capabilities,
    ContactInfo,
    CreatedKind,
    CreatedLookup,
    CRMError,
    CRMKind,
    CrmUser,
    CustomField,
    DealSnapshot,
    FieldRequirement,
    FieldUpdate,
    ItemResult,
    LossReason,
    NewComment,
    NewDeal,
    NewField,
    NewStage,
    NewTask,
    NotSupported,
    PermanentError,
    Pipeline,
    Retryable,
    Stage,
    StageChange,
    StageMove,
    TaskDeadline,
    TokenSaver,
    TokenSet,
    WebhookSubscription,
    chunked,
)
from connectors.http import AMOCRM_DEFAULT, DomainSaver, RatePolicy, RetryPolicy, ThrottledClient

LEADS_PAGE = 250  # documented maximum of `limit` for leads
IDS_PER_REQUEST = 50  # filter[id][] values per GET, keeps the URL short
WEBHOOK_SORT = 10
USERS_PAGE = 250  # documented maximum of `limit` for users (docs/crm/amocrm.md §9)

Item = tuple[str, dict[str, Any]]  # (caller's ref, payload without request_id)
# Given items a create sent, the refs of those amoCRM already holds -> their ids (see _bulk_chunk).
SavedLookup = Callable[[list[Item]], Awaitable[dict[str, str]]]


def account_base_url(subdomain: str, domain: str = "amocrm.ru") -> str:
    """https://{subdomain}.amocrm.ru, or .kommo.com for international accounts."""
    return f"https://{subdomain}.{domain}"


class AmoCRMConnector:
    kind: CRMKind = "amocrm"
    capabilities = Capabilities(
        native_loss_reasons=True,
        required_fields_by_stage=True,
        webhook_registration_api=True,
        fixed_final_stages=True,  # 142 won / 143 lost exist in every pipeline, plus "unsorted"
        final_stages_styleable=False,
        max_pipelines=50,
        max_stages_per_pipeline=100,
    )

    def __init__(
        self,
        subdomain: str,
        *,
        token: str | None = None,
        oauth: OAuthApp | None = None,
        tokens: TokenSet | None = None,
        token_saver: TokenSaver | None = None,
        base_url: str | None = None,
        domain: str = "amocrm.ru",
        rate: RatePolicy = AMOCRM_DEFAULT,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        account_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        domain_saver: DomainSaver | None = None,
        rate_limit_window: float | None = None,
        telegram_field: str | None = None,
    ) -> None:
        """`telegram_field`: id or code of the contact field that holds a client's Telegram chat id
        or @username (amoCRM has no standard one; docs/crm/amocrm.md §8)."""
        if (token is None) == (oauth is None):
            raise ValueError("give either token (long-lived) or oauth + tokens + token_saver")
        self.subdomain = subdomain
        self.telegram_field = telegram_field
        self.base_url = (base_url or account_base_url(subdomain, domain)).rstrip("/")
        # One limiter (and one refresh lock) per account and integration (docs/crm/amocrm.md §3).
        self.account_key = account_key or f"amocrm:{self.base_url}:{oauth.client_id if oauth else 'token'}"
        # A renamed account's old address redirects (UNVERIFIED for amoCRM): the client follows it
        # and `domain_saver` records the new one.
        http = ThrottledClient(
            self.base_url,
            self.account_key,
            rate,
            timeout=timeout,
            transport=transport,
            on_host_change=domain_saver,
        )
        # After a 429 the retry waits at least amoCRM's one-second window (scaled with `rate` for a
        # sped-up sandbox), whatever policy the caller gave: the account's pool is shared with other
        # integrations, so an earlier retry would meet the same exhausted second.
        window = rate_window(rate) if rate_limit_window is None else rate_limit_window
        policy = retry or RetryPolicy()
        policy = replace(policy, rate_limit_wait=max(policy.rate_limit_wait, window))
        self._t = Transport(http, None, policy, sleep)
        self.auth: LongLivedAuth | OAuthAuth
        if token is not None:
            self.auth = LongLivedAuth(token)
        else:
            if oauth is None or tokens is None or token_saver is None:
                raise ValueError("OAuth needs oauth (client id/secret/redirect uri), tokens and token_saver")
            self.auth = OAuthAuth(self.account_key, oauth, tokens, token_saver, self._t.token_request)
        self._t.auth = self.auth

    # --- plumbing ----------------------------------------------------------------------------------

    @property
    def requests_sent(self) -> int:
        return self._t.http.requests_sent

    async def refresh_if_expiring(self, within: timedelta) -> bool:
        """Refresh the OAuth tokens when they expire within `within`; False for long-lived tokens."""
        return await self.auth.refresh_if_expiring(within)

    def reset_block(self) -> None:
        """After amoCRM support lifted a 403 block: allow calls to this account again."""
        reset_account_block(self.account_key)

    def connection_resumed(self) -> None:
        self.reset_block()

    async def aclose(self) -> None:
        await self._t.http.aclose()

    async def _get(self, path: str, params: Any = None) -> Any:
        return await self._t.call("GET", path, params=params)

    async def _pages(
        self, path: str, params: list[tuple[str, Any]], key: str, page_size: int | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Follow `_links.next` until it is absent or the list ends with 204. With `page_size`
        a short page also ends the list (saves the request that would answer 204)."""
        next_path: str | None = path
        next_params: Any = params
        while next_path is not None:
            body = await self._get(next_path, next_params)
            items = mapping.embedded(body, key)
            if items:
                yield items
            href = (
                ((body or {}).get("_links") or {}).get("next", {}).get("href")
                if isinstance(body, dict)
                else None
            )
            if not items or not href or (page_size is not None and len(items) < page_size):
                return
            # Same host as ours: keep only path and query, so a proxy or sandbox base URL holds.
            parts = urlsplit(href)
            next_path, next_params = parts.path + (f"?{parts.query}" if parts.query else ""), None

    async def _bulk(
        self,
        method: str,
        path: str,
        key: str,
        items: Sequence[Item],
        *,
        idempotent: bool,
        find_saved: SavedLookup | None = None,
    ) -> list[ItemResult]:
        results: dict[str, ItemResult] = {}
        for chunk in chunked(list(items), MAX_BATCH):
            await self._bulk_chunk(method, path, key, list(chunk), idempotent, results, find_saved)
        return [results[ref] for ref, _ in items]

    async def _bulk_chunk(
        self,
        method: str,
        path: str,
        key: str,
        chunk: list[Item],
        idempotent: bool,
        results: dict[str, ItemResult],
        find_saved: SavedLookup | None = None,
    ) -> None:
        queue = [chunk]
        while queue:
            part = queue.pop(0)
            body = [dict(payload, request_id=str(i)) for i, (_, payload) in enumerate(part)]
            try:
                answer = await self._t.call(method, path, json_body=body, idempotent=idempotent, bulk=True)
            except BatchTooLarge as exc:
                if len(part) == 1:
                    raise Retryable(
                        exc.message, crm_code="HTTP_504", crm_text=exc.crm_text, status=504
                    ) from exc
                half = len(part) // 2  # 504 = too much in one write (docs/crm/amocrm.md §3): halve, retry
                queue[:0] = [part[:half], part[half:]]
                continue
            except ItemErrors as exc:
                failing = {int(rid) for rid in exc.errors if rid.isdigit() and int(rid) < len(part)}
                if not failing:  # errors we cannot pin on an item fail every item of the request
                    for ref, _ in part:
                        results[ref] = ItemResult(
                            ref,
                            error=PermanentError(
                                exc.message,
                                item_ref=ref,
                                crm_code=exc.crm_code,
                                crm_text=exc.crm_text,
                                status=400,
                            ),
                        )
                    continue
                for index in failing:
                    ref = part[index][0]
                    errs = exc.errors[str(index)]
                    results[ref] = ItemResult(
                        ref,
                        error=PermanentError(
                            f"amoCRM rejected item {ref}: {describe(errs)}",
                            item_ref=ref,
                            crm_code=str(errs[0].get("code")) if errs else None,
                            crm_text=describe(errs),
                            status=400,
                        ),
                    )
                # The 400 lists the bad items and carries no saved entities, and PHPLIB fails the
                # whole collection on it; but no doc says a bulk write is all or nothing, and
                # issue #11 reports the valid items of such a request saved. Resending an update
                # is harmless; resending a create would duplicate what was saved: look those up
                # by their marker first and resend only the ones amoCRM does not hold.
                remainder = [item for i, item in enumerate(part) if i not in failing]
                if remainder and find_saved is not None:
                    found = await self._saved_after_400(find_saved, remainder, exc)
                    for ref, _ in remainder:
                        if ref in found:
                            results[ref] = ItemResult(ref, crm_id=found[ref])
                    remainder = [item for item in remainder if item[0] not in found]
                if remainder:
                    queue.insert(0, remainder)
                continue
            saved = mapping.embedded(answer, key)
            by_rid = {str(e.get("request_id")): e for e in saved if e.get("request_id") is not None}
            for i, (ref, _) in enumerate(part):
                entry = by_rid.get(str(i)) or (saved[i] if i < len(saved) else None)
                crm_id = entry.get("id") if entry else None
                results[ref] = ItemResult(ref, crm_id=str(crm_id) if crm_id is not None else None)

    @staticmethod
    async def _saved_after_400(
        find_saved: SavedLookup, items: list[Item], rejected: ItemErrors
    ) -> dict[str, str]:
        try:
            return await find_saved(items)
        except CRMError as exc:
            # We cannot tell whether amoCRM kept these items, so neither resend nor fail them. The
            # outbox treats a create that ended in TIMEOUT as "may have been applied" and looks its
            # commands up by marker on the next drain (app.outbox.recovery): exactly this state.
            raise Retryable(
                f"amoCRM rejected part of a bulk create ({rejected.crm_text}) and checking whether it "
                f"saved the rest failed: {exc.message}",
                crm_code="TIMEOUT",
                crm_text=f"{rejected.crm_text}; lookup failed: {exc.crm_text}",
                status=exc.status,
            ) from exc

    # --- account -----------------------------------------------------------------------------------

    async def check(self) -> AccountInfo:
        data = await self._get("/api/v4/account")
        if not isinstance(data, dict):
            raise PermanentError("GET /api/v4/account answered without an account")
        return AccountInfo(account_id=str(data.get("id", "")), name=str(data.get("name", "")))

    # --- pipelines and stages -------------------------------------------------------------------------

    async def list_pipelines(self) -> list[Pipeline]:
        body = await self._get("/api/v4/leads/pipelines")
        return [mapping.pipeline_from_api(p) for p in mapping.embedded(body, "pipelines")]

    async def create_pipeline(self, name: str, sort: int, stages: Sequence[NewStage]) -> Pipeline:
        # Stages can be given only here, inside `_embedded.statuses` (docs/crm/amocrm.md §4).
        payload = {
            "name": name,
            "sort": sort,
            "is_main": False,
            "is_unsorted_on": True,
            "request_id": "0",
            "_embedded": {"statuses": [mapping.new_status_payload(s) for s in stages]},
        }
        body = await self._t.call("POST", "/api/v4/leads/pipelines", json_body=[payload], idempotent=False)
        created = mapping.embedded(body, "pipelines")
        if not created:
            raise PermanentError("amoCRM created no pipeline")
        if not mapping.embedded(created[0], "statuses"):  # re-read when the answer omits the stages
            created[0] = await self._get(f"/api/v4/leads/pipelines/{created[0]['id']}")
        return mapping.pipeline_from_api(created[0])

    async def rename_pipeline(self, pipeline_id: str, name: str) -> None:
        await self._t.call("PATCH", f"/api/v4/leads/pipelines/{pipeline_id}", json_body={"name": name})

    async def add_stages(self, pipeline_id: str, stages: Sequence[NewStage]) -> list[Stage]:
        fixed = [s for s in stages if s.semantics != "process"]
        if fixed:
            raise NotSupported(
                f"amoCRM pipelines have one fixed won (142) and lost (143) stage; rename them instead of "
                f"adding {', '.join(s.code for s in fixed)}"
            )
        path = f"/api/v4/leads/pipelines/{pipeline_id}/statuses"
        out: list[Stage] = []
        for chunk in chunked(list(stages), MAX_BATCH):
            body = [dict(mapping.new_status_payload(s), request_id=str(i)) for i, s in enumerate(chunk)]
            answer = await self._t.call("POST", path, json_body=body, idempotent=False)
            saved = mapping.embedded(answer, "statuses")
            by_rid = {str(s.get("request_id")): s for s in saved}
            for i in range(len(chunk)):
                status = by_rid.get(str(i)) or saved[i]
                out.append(mapping.stage_from_api(status, pipeline_id))
        return out

    async def update_stages(self, changes: Sequence[StageChange]) -> None:
        for change in changes:
            stage = change.stage
            body: dict[str, Any] = {}
            if change.name is not None:
                body["name"] = change.name
            # Won/lost keep amoCRM's sort and colour (capabilities.final_stages_styleable False).
            if stage.semantics == "process":
                if change.sort is not None:
                    body["sort"] = change.sort
                if change.color is not None:
                    body["color"] = change.color
            if not body or (not stage.editable and stage.semantics == "process"):
                continue
            await self._t.call(
                "PATCH", f"/api/v4/leads/pipelines/{stage.pipeline_id}/statuses/{stage.id}", json_body=body
            )

    async def delete_stages(self, stages: Sequence[Stage]) -> None:
        for stage in stages:
            try:
                await self._t.call(
                    "DELETE", f"/api/v4/leads/pipelines/{stage.pipeline_id}/statuses/{stage.id}"
                )
            except PermanentError as exc:
                if exc.status != 404:  # already gone: the goal is reached
                    raise

    # --- custom fields ---------------------------------------------------------------------------------

    async def list_fields(self) -> list[CustomField]:
        out: list[CustomField] = []
        # "Returns up to 50 fields per request" whatever `limit` says: follow _links.next.
        async for page in self._pages("/api/v4/leads/custom_fields", [("limit", 50)], "custom_fields"):
            out += [mapping.field_from_api(f) for f in page]
        return out

    async def create_fields(self, fields: Sequence[NewField]) -> list[CustomField]:
        out: list[CustomField] = []
        for chunk in chunked(list(fields), MAX_BATCH):
            body = [dict(mapping.field_payload(f), request_id=str(i)) for i, f in enumerate(chunk)]
            answer = await self._t.call(
                "POST", "/api/v4/leads/custom_fields", json_body=body, idempotent=False
            )
            saved = mapping.embedded(answer, "custom_fields")
            by_rid = {str(f.get("request_id")): f for f in saved}
            out += [mapping.field_from_api(by_rid.get(str(i)) or saved[i]) for i in range(len(chunk))]
        return out

    async def set_field_requirements(self, requirements: Sequence[FieldRequirement]) -> None:
        """Make each field required for exactly the given stages of its pipeline; what the field
        requires in other pipelines stays. A field already right gets no write."""
        by_field: dict[str, list[FieldRequirement]] = {}
        for req in requirements:
            by_field.setdefault(req.field_id, []).append(req)
        for field_id, reqs in by_field.items():
            path = f"/api/v4/leads/custom_fields/{field_id}"
            current = await self._get(path)
            existing = [
                {"status_id": int(r["status_id"]), "pipeline_id": int(r["pipeline_id"])}
                for r in (current or {}).get("required_statuses") or []
                if isinstance(r, dict)
            ]
            pipelines = {int(r.pipeline_id) for r in reqs}
            wanted = [r for r in existing if r["pipeline_id"] not in pipelines]
            for req in reqs:
                wanted += [{"status_id": int(s), "pipeline_id": int(req.pipeline_id)} for s in req.stage_ids]
            key = lambda r: (r["pipeline_id"], r["status_id"])  # noqa: E731
            if sorted(map(key, wanted)) == sorted(map(key, existing)):
                continue
            # PHPLIB's CustomFieldModel::toApi always sends the field's `type` on update; so do we.
            body = {"type": (current or {}).get("type"), "required_statuses": wanted}
            await self._t.call("PATCH", path, json_body=body)

    # --- loss reasons ----------------------------------------------------------------------------------

    async def list_loss_reasons(self) -> list[LossReason]:
        out: list[LossReason] = []
        async for page in self._pages("/api/v4/leads/loss_reasons", [("limit", 250)], "loss_reasons"):
            out += [mapping.loss_reason_from_api(r) for r in page]
        return out

    async def create_loss_reasons(self, names: Sequence[str]) -> list[LossReason]:
        out: list[LossReason] = []
        for chunk in chunked(list(names), MAX_BATCH):
            body = [{"name": name, "sort": 0, "request_id": str(i)} for i, name in enumerate(chunk)]
            answer = await self._t.call(
                "POST", "/api/v4/leads/loss_reasons", json_body=body, idempotent=False
            )
            saved = mapping.embedded(answer, "loss_reasons")
            by_rid = {str(r.get("request_id")): r for r in saved}
            out += [mapping.loss_reason_from_api(by_rid.get(str(i)) or saved[i]) for i in range(len(chunk))]
        return out

    # --- deals -----------------------------------------------------------------------------------------

    async def count_deals_in_stages(self, stages: Sequence[Stage]) -> dict[str, int]:
        """Deals per stage id. `filter[statuses]` needs pipeline/status pairs (docs/crm/amocrm.md §5)."""
        counts = {s.id: 0 for s in stages}
        if not stages:
            return counts
        params: list[tuple[str, Any]] = [("limit", LEADS_PAGE)]
        for i, stage in enumerate(stages):
            params += [
                (f"filter[statuses][{i}][pipeline_id]", stage.pipeline_id),
                (f"filter[statuses][{i}][status_id]", stage.id),
            ]
        wanted = {(s.pipeline_id, s.id) for s in stages}
        async for page in self._pages("/api/v4/leads", params, "leads", LEADS_PAGE):
            for lead in page:
                pair = (str(lead.get("pipeline_id")), str(lead.get("status_id")))
                if pair in wanted:
                    counts[pair[1]] += 1
        return counts

    async def get_deals(self, ids: Sequence[str]) -> list[DealSnapshot]:
        out: list[DealSnapshot] = []
        for chunk in chunked([i for i in dict.fromkeys(ids) if str(i).isdigit()], IDS_PER_REQUEST):
            params: list[tuple[str, Any]] = [("limit", LEADS_PAGE)] + [("filter[id][]", i) for i in chunk]
            async for page in self._pages("/api/v4/leads", params, "leads", LEADS_PAGE):
                out += [mapping.deal_from_api(lead) for lead in page]
        return out

    async def list_deals_modified_since(self, since: datetime) -> AsyncIterator[list[DealSnapshot]]:
        params: list[tuple[str, Any]] = [
            ("filter[updated_at][from]", int(since.timestamp())),
            ("order[updated_at]", "asc"),
            ("limit", LEADS_PAGE),
        ]
        async for page in self._pages("/api/v4/leads", params, "leads", LEADS_PAGE):
            yield [mapping.deal_from_api(lead) for lead in page]

    async def list_all_deals(self) -> AsyncIterator[list[DealSnapshot]]:
        params: list[tuple[str, Any]] = [("order[id]", "asc"), ("limit", LEADS_PAGE)]
        async for page in self._pages("/api/v4/leads", params, "leads", LEADS_PAGE):
            yield [mapping.deal_from_api(lead) for lead in page]

    async def _lead_writes(self, items: list[tuple[str, str, dict[str, Any]]]) -> list[ItemResult]:
        """PATCH /api/v4/leads with only the changed fields (docs/crm/amocrm.md §5: sending a whole lead back
        fails on deactivated users). Items with a non-numeric deal id fail without a request."""
        results: dict[str, ItemResult] = {}
        valid: list[Item] = []
        for ref, deal_id, body in items:
            if not str(deal_id).isdigit():
                results[ref] = ItemResult(
                    ref, error=PermanentError(f"deal id {deal_id!r} is not an amoCRM lead id", item_ref=ref)
                )
            else:
                valid.append((ref, {"id": int(deal_id), **body}))
        for result in await self._bulk("PATCH", "/api/v4/leads", "leads", valid, idempotent=True):
            results[result.ref] = result
        return [results[ref] for ref, _, _ in items]

    async def move_deals(self, moves: Sequence[StageMove]) -> list[ItemResult]:
        # status_id always with pipeline_id: 142/143 exist in every pipeline (docs/crm/amocrm.md §4, §5).
        return await self._lead_writes(
            [
                (m.ref, m.deal_id, {"pipeline_id": int(m.pipeline_id), "status_id": int(m.stage_id)})
                for m in moves
            ]
        )

    async def update_deal_fields(self, updates: Sequence[FieldUpdate]) -> list[ItemResult]:
        """PATCH /api/v4/leads: custom fields by id (None clears), the amount as the lead's `price`
        (whole units: amoCRM keeps it as an integer) and the native loss reason as `loss_reason_id`."""
        items = [
            (update.ref, update.deal_id, mapping.lead_values(_lead_values(update))) for update in updates
        ]
        return await self._lead_writes(items)

    async def create_tasks(self, tasks: Sequence[NewTask]) -> list[ItemResult]:
        items: list[Item] = []
        for task in tasks:
            text = task.title + (f"\n\n{task.description}" if task.description else "")
            payload: dict[str, Any] = {
                "text": text,
                "complete_till": int(task.due_at.timestamp()),
                "entity_id": int(task.deal_id),
                "entity_type": "leads",
                "task_type_id": 1,  # "Follow-up", present in every account
            }
            if task.responsible_id:
                payload["responsible_user_id"] = int(task.responsible_id)
            items.append((task.ref, payload))
        # Not resent after a timeout (idempotent=False): amoCRM would create the task twice; after a
        # partial 400 the valid tasks are looked up by marker before any is resent.
        return await self._bulk(
            "POST", "/api/v4/tasks", "tasks", items, idempotent=False, find_saved=self._saved_tasks
        )

    async def move_task_deadlines(self, changes: Sequence[TaskDeadline]) -> list[ItemResult]:
        """PATCH /api/v4/tasks with {id, complete_till} items (Kommo "edit tasks"; the single-task
        form PATCH /api/v4/tasks/{id} answers id and updated_at). Repeating it is harmless."""
        items: list[Item] = [
            (c.ref, {"id": int(c.task_id), "complete_till": int(c.due_at.timestamp())}) for c in changes
        ]
        return await self._bulk("PATCH", "/api/v4/tasks", "tasks", items, idempotent=True)

    async def find_created(self, kind: CreatedKind, lookups: Sequence[CreatedLookup]) -> dict[str, str]:
        """Deals: not supported (see create_deals). Tasks: GET /api/v4/tasks with filter[entity_type]=leads and the deals' ids in
        filter[entity_id][] (documented: the id filter needs the type). Comments: GET
        /api/v4/leads/{id}/notes?filter[note_type][]=common once per deal, because the account-wide
        /api/v4/leads/notes documents no entity filter (only id, note_type, updated_at) and would
        mean reading every note of the account. Paginated; the marker is in a task's `text`, in a
        note's `params.text`."""
        if kind == "deal":
            raise NotSupported(
                "amoCRM leads have no field for an external id that the API can filter on (the custom-field "
                "filter is an alpha feature of some accounts): a created lead cannot be found by its marker"
            )
        deals = sorted({item.deal_id for item in lookups if str(item.deal_id).isdigit()})
        texts: list[tuple[str, str, str]] = []  # (deal id, crm id, text)
        if kind == "task":
            for chunk in chunked(deals, MAX_BATCH):
                params: list[tuple[str, Any]] = [("limit", 250), ("filter[entity_type]", "leads")]
                params += [("filter[entity_id][]", d) for d in chunk]
                async for page in self._pages("/api/v4/tasks", params, "tasks", 250):
                    texts += [
                        (str(row.get("entity_id")), str(row.get("id")), mapping.created_text("task", row))
                        for row in page
                    ]
        else:
            for deal in deals:
                params = [("limit", 250), ("filter[note_type][]", "common")]
                try:
                    async for page in self._pages(f"/api/v4/leads/{deal}/notes", params, "notes", 250):
                        texts += [
                            (deal, str(row.get("id")), mapping.created_text("note", row)) for row in page
                        ]
                except PermanentError as exc:
                    if exc.status != 404:  # a deal that is gone holds no comment of ours
                        raise
        found: dict[str, str] = {}
        for item in lookups:
            match = next(
                (crm_id for deal, crm_id, text in texts if deal == item.deal_id and item.marker in text), None
            )
            if match is not None:
                found[item.ref] = match
        return found

    async def add_comments(self, comments: Sequence[NewComment]) -> list[ItemResult]:
        items: list[Item] = [
            (c.ref, {"entity_id": int(c.deal_id), "note_type": "common", "params": {"text": c.text}})
            for c in comments
        ]
        return await self._bulk(
            "POST", "/api/v4/leads/notes", "notes", items, idempotent=False, find_saved=self._saved_notes
        )

    async def _saved_tasks(self, items: list[Item]) -> dict[str, str]:
        return await self._find_saved("task", items)

    async def _saved_notes(self, items: list[Item]) -> dict[str, str]:
        return await self._find_saved("comment", items)

    async def _find_saved(self, kind: Literal["task", "comment"], items: list[Item]) -> dict[str, str]:
        """Which of these create payloads amoCRM already holds, by the marker in their text (as the
        outbox's crash recovery does). An item without a marker cannot be told apart from a task or
        note a person wrote, so it is not looked up: it is sent again."""
        lookups = []
        for ref, payload in items:
            marker = mapping.marker_in(mapping.created_text("task" if kind == "task" else "note", payload))
            if marker is not None:
                lookups.append(CreatedLookup(ref, str(payload["entity_id"]), marker))
        return await self.find_created(kind, lookups) if lookups else {}

    # --- contacts and new deals -------------------------------------------------------------------

    async def get_deal_contacts(self, deal_ids: Sequence[str]) -> dict[str, list[ContactInfo]]:
        """GET /api/v4/leads?with=contacts (each lead's `_embedded.contacts` [{id, is_main}]), then GET
        /api/v4/contacts with the contacts' ids in filter[id][]; 50 ids a request for either. A lead
        that is gone is absent from the answer: it has no contacts."""
        wanted = [i for i in dict.fromkeys(str(d) for d in deal_ids) if i.isdigit()]
        bindings: dict[str, list[tuple[str, bool]]] = {}
        for chunk in chunked(wanted, IDS_PER_REQUEST):
            params: list[tuple[str, Any]] = [("with", "contacts"), ("limit", LEADS_PAGE)]
            params += [("filter[id][]", i) for i in chunk]
            async for page in self._pages("/api/v4/leads", params, "leads", LEADS_PAGE):
                bindings.update({str(lead["id"]): mapping.lead_contact_ids(lead) for lead in page})
        contacts = await self._contacts_by_id(
            list(dict.fromkeys(cid for pairs in bindings.values() for cid, _ in pairs))
        )
        out: dict[str, list[ContactInfo]] = {str(d): [] for d in deal_ids}
        for deal_id, pairs in bindings.items():
            out[deal_id] = [
                mapping.contact_from_api(contacts[cid], is_primary=main, telegram_field=self.telegram_field)
                for cid, main in pairs
                if cid in contacts
            ]
        return out

    async def _contacts_by_id(self, contact_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunked(list(contact_ids), IDS_PER_REQUEST):
            params: list[tuple[str, Any]] = [("limit", LEADS_PAGE)] + [("filter[id][]", i) for i in chunk]
            async for page in self._pages("/api/v4/contacts", params, "contacts", LEADS_PAGE):
                found.update({str(c["id"]): c for c in page})
        return found

    async def create_deals(self, items: Sequence[NewDeal]) -> list[ItemResult]:
        """POST /api/v4/leads, 50 a request: name, pipeline_id, status_id, responsible_user_id,
        custom_fields_values and `_embedded.contacts` [{id}] (DOC leads-api "add leads"). Not resent
        after a timeout. A lead cannot carry the outbox marker anywhere the API can search
        (find_created raises NotSupported for "deal"), so a create whose answer was lost stays
        uncertain for the outbox to settle. After a 400 naming some items, the others are looked up
        by name, pipeline and stage among the leads created since (_saved_leads) and only those
        amoCRM does not hold are sent again (docs/crm/amocrm.md §3, §8)."""
        payloads: list[Item] = []
        for item in items:
            payload: dict[str, Any] = {
                **mapping.lead_values({**item.fields, **_amount_values(item.amount)}),
                "name": item.title,
                "pipeline_id": int(item.pipeline_id),
                "status_id": int(item.stage_id),
            }
            if item.responsible_id:
                payload["responsible_user_id"] = int(item.responsible_id)
            if item.contact_ids:
                payload["_embedded"] = {"contacts": [{"id": int(c)} for c in item.contact_ids]}
            payloads.append((item.ref, payload))
        # amoCRM's clock, not ours, stamps created_at: a minute's margin; the name must match too.
        since = int(time.time()) - 60
        claimed: set[str] = set()  # leads already answering an item: never matched again

        async def saved(sent: list[Item]) -> dict[str, str]:
            found = await self._saved_leads(sent, since, claimed)
            claimed.update(found.values())
            return found

        results: list[ItemResult] = []
        for chunk in chunked(payloads, MAX_BATCH):  # one request each, so `claimed` grows in between
            done = await self._bulk(
                "POST", "/api/v4/leads", "leads", chunk, idempotent=False, find_saved=saved
            )
            claimed.update(r.crm_id for r in done if r.crm_id)
            results += done
        return results

    async def _saved_leads(self, items: list[Item], since: int, claimed: set[str]) -> dict[str, str]:
        """After a 400 naming some items of a lead create, which of the others amoCRM saved anyway
        (UNVERIFIED whether it ever does, see _bulk_chunk): with no marker on a lead, a lead counts as
        ours when it was created since the request went out with the same name, pipeline and stage
        and answers no other item."""
        pipelines = sorted({int(payload["pipeline_id"]) for _, payload in items})
        params: list[tuple[str, Any]] = [("limit", LEADS_PAGE), ("filter[created_at][from]", since)]
        params += [("filter[pipeline_id][]", p) for p in pipelines]
        candidates: list[dict[str, Any]] = []
        async for page in self._pages("/api/v4/leads", params, "leads", LEADS_PAGE):
            candidates += [lead for lead in page if str(lead.get("id")) not in claimed]
        found: dict[str, str] = {}
        for ref, payload in items:
            key = (payload["name"], payload["pipeline_id"], payload["status_id"])
            match = next(
                (c for c in candidates if (c.get("name"), c.get("pipeline_id"), c.get("status_id")) == key),
                None,
            )
            if match is not None:
                candidates.remove(match)
                found[ref] = str(match["id"])
        return found

    # --- webhooks --------------------------------------------------------------------------------------

    async def list_webhooks(self) -> list[WebhookSubscription]:
        body = await self._get("/api/v4/webhooks")
        return [mapping.webhook_from_api(w) for w in mapping.embedded(body, "webhooks")]

    async def register_webhook(self, url: str, events: Sequence[str]) -> WebhookSubscription:
        body = {"destination": url, "settings": list(events), "sort": WEBHOOK_SORT}
        answer = await self._t.call("POST", "/api/v4/webhooks", json_body=body)
        if isinstance(answer, dict) and "destination" not in answer:
            found = mapping.embedded(answer, "webhooks")
            answer = found[0] if found else None
        if not isinstance(answer, dict):
            raise PermanentError("amoCRM answered the subscription without a webhook")
        return mapping.webhook_from_api(answer)

    async def unregister_webhook(self, url: str) -> None:
        try:
            await self._t.call("DELETE", "/api/v4/webhooks", json_body={"destination": url})
        except PermanentError as exc:
            if exc.status != 404:  # not subscribed: nothing to undo
                raise

    # --- users -----------------------------------------------------------------------------------------

    async def list_users(self) -> list[CrmUser]:
        """GET /api/v4/users, 250 a page (`_embedded.users`, `_links.next`); `rights.is_active`
        tells a deactivated user. Administrators only: anyone else gets 403 (docs/crm/amocrm.md §9)."""
        users: list[CrmUser] = []
        async for page in self._pages("/api/v4/users", [("limit", USERS_PAGE)], "users", USERS_PAGE):
            users += [_user_from_api(u) for u in page if isinstance(u, dict) and u.get("id") is not None]
        return users


def _user_from_api(user: dict[str, Any]) -> CrmUser:
    rights = user.get("rights")
    rights = rights if isinstance(rights, dict) else {}
    user_id = str(user["id"])
    name = str(user.get("name") or "").strip() or str(user.get("email") or "").strip()
    return CrmUser(id=user_id, name=name or f"#{user_id}", active=rights.get("is_active", True) is not False)


async def exchange_authorization_code(
    subdomain: str,
    app: OAuthApp,
    code: str,
    *,
    base_url: str | None = None,
    domain: str = "amocrm.ru",
    rate: RatePolicy = AMOCRM_DEFAULT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> TokenSet:
    """The first token pair for an account: POST /oauth2/access_token with the authorization code
    (use the `referer` host amoCRM put on the redirect as `subdomain`/`base_url`)."""
    url = (base_url or account_base_url(subdomain, domain)).rstrip("/")
    http = ThrottledClient(url, f"amocrm:{url}:{app.client_id}", rate, transport=transport)
    try:
        policy = RetryPolicy(rate_limit_wait=rate_window(rate))  # a 429 here counts the same second
        return await exchange_code(Transport(http, None, policy).token_request, app, code)
    finally:
        await http.aclose()


def _amount_values(amount: Decimal | None) -> dict[str, Any]:
    """The lead's `price` is an integer (DOC leads-api): an amount rounds to whole units."""
    return {} if amount is None else {"price": int(amount.quantize(Decimal(1), ROUND_HALF_UP))}


def _lead_values(update: FieldUpdate) -> dict[str, Any]:
    values = {**update.values, **_amount_values(update.amount)}
    if update.loss_reason_id is not None:
        values["loss_reason_id"] = update.loss_reason_id
    return values
