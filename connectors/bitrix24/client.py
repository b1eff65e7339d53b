"""Bitrix24Connector: the CRMConnector for Bitrix24 (API facts and sources: docs/crm/bitrix24.md).

Method choices, and why:
- Pipelines are `crm.category.*` with entityTypeId 2; stages are `crm.status.*` on `DEAL_STAGE` /
  `DEAL_STAGE_{id}` (codes auto-prefixed `C{id}:`; SORT: process < success < failure).
- Reads use legacy `crm.deal.list` (UPPER_SNAKE fields incl. UF_CRM_*, documented DATE_MODIFY filter,
  fast mode with start=-1). Stage moves use `crm.item.update` (entityTypeId 2), the only method that
  can change the pipeline (crm.deal.update treats CATEGORY_ID as immutable and silently drops a
  foreign STAGE_ID); custom-field writes use `crm.deal.update`, which takes UF_CRM_* names as they are.
- Writes are packed into `batch` (<= 50 commands, halt 0); a command's error is that item's
  PermanentError, the rest of the batch stands.

Verified (search over b24restdocs / b24pysdk / fast_bitrix24 sources):
- Default deal stages NEW..APOLOGY with names, colours, SORT 10..80, SEMANTICS and SYSTEM flags:
  b24restdocs api-reference/crm/status/crm-status-list.md (the sandbox copies them).
- STATUS_ID auto-prefix `C{id}:` and the SORT group order: b24restdocs crm-status-add.md.
- Batch references to list results are `$result[cmd][49][ID]` (no wrapper for crm.deal.list):
  b24pysdk api/callers/call_list_fast.py chains 50 fast-mode commands exactly this way.
- fast_bitrix24 1.8 accepts any URL with scheme/netloc/path (http too: utils._url_valid), appends
  `/`, POSTs JSON to `{webhook}{method}` with the method lower-cased, and batches `method?query`.
- Binding a bound handler answers 400 ERROR_CORE "Unable to set event handler: Handler already
  binded" (b24-rest-docs ru api-reference/events/event-bind.md; the rest module's eventBind).
- A deal the user may not change: crm.item.update and crm.timeline.comment.add answer ACCESS_DENIED,
  legacy crm.deal.update an empty code with "Access denied" (the methods' DOCS error tables); inside
  `batch` only that command's result_error (DOCS batch.md), so it is the item's error.
- A deal's contacts: crm.deal.contact.items.get [{CONTACT_ID, SORT, ROLE_ID, IS_PRIMARY}], then
  crm.contact.list with PHONE/EMAIL/IM named in select ("*" leaves multi-fields out); Telegram is an IM
  value of VALUE_TYPE TELEGRAM (CORE). New deals: crm.item.add with contactIds, originatorId/originId
  (DOCS crm-item-add.md; docs/crm/bitrix24.md §7).
Still unverified (built to the safe reading in docs/crm/bitrix24.md, isolated so a correction is one line):
- STATUS_ID max length in DEAL_STAGE_xx ("depends on the pipeline identifier"): we assume 22 with prefix.
- What the portal substitutes for a batch reference that does not resolve: the fast pull stops at the
  first short page, so it never depends on it.
- Exact error code/text of crm.item.update for a stage outside the pipeline, and of event.bind called
  with webhook auth (we never call it that way).
- Whether crm.item.add checks that contactIds exist, which of several becomes primary, and whether
  ORIGIN_ID takes the `@` list filter (docs/crm/bitrix24.md §7).
- The text of crm.timeline.comment.add's ACCESS_DENIED (only the code is documented), and the
  cloud's ~60 s cut-off of one request (see transport.REQUEST_TIME_LIMIT).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.base import (
    MAX_BATCH,
    AccountInfo,
    Capabilities,
    ContactInfo,
    CreatedKind,
    CreatedLookup,
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
    Stage,
    StageChange,
    StageMove,
    TaskDeadline,
    WebhookSubscription,
    chunked,
)
from connectors.bitrix24.events import DEAL_EVENTS
from connectors.bitrix24.mapping import (
    CONTACT_SELECT,
    DEAL_SELECT,
    USER_TYPES,
    bindings_in_order,
    contact_from_row,
    deal_from_row,
    entity_id,
    field_from_row,
    pipeline_from_row,
    stage_from_row,
    stage_id_for,
)
from connectors.bitrix24.transport import (
    DEFAULT_TIMEOUT,
    OPERATING_BUDGET,
    Bitrix24Transport,
    OAuthApp,
    Outcome,
)
from connectors.http import BITRIX24_STANDARD, DomainSaver, RatePolicy, RetryPolicy

_EVENT_ALIASES = {"add": "ONCRMDEALADD", "update": "ONCRMDEALUPDATE", "delete": "ONCRMDEALDELETE"}
REQUIRED_SCOPES = ("crm", "task")
PAGE = 50
# ORIGINATOR_ID of the deals we create; ORIGIN_ID holds the outbox marker (find_created "deal").
ORIGINATOR = "funnelsync"


class Bitrix24Connector:
    kind: CRMKind = "bitrix24"

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        oauth: OAuthApp | None = None,
        rate: RatePolicy = BITRIX24_STANDARD,
        retry: RetryPolicy | None = None,
        operating_budget: float = OPERATING_BUDGET,
        timeout: float = DEFAULT_TIMEOUT,
        account_key: str | None = None,
        default_responsible_id: str | None = None,
        domain_saver: DomainSaver | None = None,
    ) -> None:
        """Exactly one of `webhook_url` (inbound webhook `https://{portal}/rest/{user}/{code}/`) or
        `oauth` (an installed app). `rate` is the portal's plan (BITRIX24_ENTERPRISE for 5/250)."""
        self.transport = Bitrix24Transport(
            webhook_url=webhook_url,
            oauth=oauth,
            rate=rate,
            retry=retry,
            operating_budget=operating_budget,
            timeout=timeout,
            account_key=account_key,
            domain_saver=domain_saver,
        )
        if default_responsible_id is None and webhook_url is not None:
            # The webhook's user (`/rest/{user}/{code}/`) owns tasks when a task names nobody.
            parts = [p for p in webhook_url.split("/") if p]
            default_responsible_id = parts[-2] if len(parts) >= 2 and parts[-2].isdigit() else None
        self.default_responsible_id = default_responsible_id or "1"
        self.capabilities = Capabilities(
            native_loss_reasons=False,  # loss reasons are an enumeration user field on deals
            required_fields_by_stage=False,  # no documented REST API for stage-required fields (ref 3.5)
            webhook_registration_api=oauth is not None,  # event.bind needs application auth
            fixed_final_stages=True,  # WON/LOSE exist in every category
            final_stages_styleable=True,
            stage_id_format="C{pipeline_id}:{code}",
            stage_id_max_length=22,
        )

    @property
    def operating_seconds(self) -> dict[str, float]:
        """`time.operating` per method from the latest responses (seconds of the 480 s budget used)."""
        return self.transport.operating_seconds

    async def refresh_if_expiring(self, within: timedelta) -> bool:
        """Refresh OAuth tokens expiring within `within`; False for inbound-webhook auth."""
        return await self.transport.refresh_if_expiring(within)

    def connection_resumed(self) -> None:
        """Nothing to forget: Bitrix24 refusals are per request (limits) or per token (auth)."""

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def _result(
        self, method: str, params: Mapping[str, Any] | None = None, *, idempotent: bool = True
    ) -> Any:
        return (await self.transport.call(method, params, idempotent=idempotent)).get("result")

    @staticmethod
    def _raise_first(outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error

    # --- account -----------------------------------------------------------------------------------

    async def check(self) -> AccountInfo:
        scopes = await self._result("scope")
        granted = tuple(str(s) for s in scopes) if isinstance(scopes, list) else ()
        oauth = self.transport.oauth
        account_id = self.transport.portal
        if oauth is not None:
            account_id = oauth.member_id or str(oauth.tokens.extra.get("member_id") or account_id)
        return AccountInfo(
            account_id=account_id,
            name=self.transport.portal,
            scopes=granted,
            missing_scopes=tuple(s for s in REQUIRED_SCOPES if s not in granted),
        )

    # --- pipelines and stages ----------------------------------------------------------------------

    async def list_pipelines(self) -> list[Pipeline]:
        categories: list[dict[str, Any]] = []
        start: int | None = 0
        while start is not None:
            body = await self.transport.call("crm.category.list", {"entityTypeId": 2, "start": start})
            categories.extend((body.get("result") or {}).get("categories") or [])
            start = body.get("next")
        stages_by_category: dict[str, list[Stage]] = {}
        commands = [
            (
                str(c["id"]),
                "crm.status.list",
                {"order": {"SORT": "ASC"}, "filter": {"ENTITY_ID": entity_id(str(c["id"]))}},
            )
            for c in categories
        ]
        for outcome in await self.transport.batch(commands, idempotent=True):
            if outcome.error is not None:
                raise outcome.error
            rows = list(outcome.result or [])
            page = outcome.next
            while page is not None:  # a funnel with more than 50 stages: follow `next`
                body = await self.transport.call(
                    "crm.status.list",
                    {
                        "order": {"SORT": "ASC"},
                        "filter": {"ENTITY_ID": entity_id(outcome.ref)},
                        "start": page,
                    },
                )
                rows.extend(body.get("result") or [])
                page = body.get("next")
            stages_by_category[outcome.ref] = [stage_from_row(r, outcome.ref) for r in rows]
        return [pipeline_from_row(c, stages_by_category.get(str(c["id"]), [])) for c in categories]

    async def _stages(self, pipeline_id: str) -> list[Stage]:
        rows = await self._result(
            "crm.status.list", {"order": {"SORT": "ASC"}, "filter": {"ENTITY_ID": entity_id(pipeline_id)}}
        )
        return [stage_from_row(r, pipeline_id) for r in rows or []]

    async def create_pipeline(self, name: str, sort: int, stages: Sequence[NewStage]) -> Pipeline:
        """Create the category. Bitrix24 fills it with its default stages at once (NEW..APOLOGY), so
        `stages` is not sent here: provisioning re-plans against what exists and reuses those."""
        result = await self._result(
            "crm.category.add", {"entityTypeId": 2, "fields": {"name": name, "sort": sort}}, idempotent=False
        )
        category = result["category"]
        return pipeline_from_row(category, await self._stages(str(category["id"])))

    async def rename_pipeline(self, pipeline_id: str, name: str) -> None:
        await self._result(
            "crm.category.update", {"entityTypeId": 2, "id": int(pipeline_id), "fields": {"name": name}}
        )

    async def add_stages(self, pipeline_id: str, stages: Sequence[NewStage]) -> list[Stage]:
        semantics_code = {"process": "", "success": "S", "failure": "F"}
        commands = [
            (
                s.code,
                "crm.status.add",
                {
                    "fields": {
                        "ENTITY_ID": entity_id(pipeline_id),
                        "STATUS_ID": s.code,
                        "NAME": s.name,
                        "SORT": s.sort,
                        "COLOR": s.color,
                        "SEMANTICS": semantics_code[s.semantics],
                    }
                },
            )
            for s in stages
        ]
        outcomes = await self.transport.batch(commands, idempotent=False)
        self._raise_first(outcomes)
        return [
            Stage(
                id=stage_id_for(pipeline_id, s.code),
                pipeline_id=str(pipeline_id),
                name=s.name,
                sort=s.sort,
                semantics=s.semantics,
                color=s.color,
                system=False,
                row_id=str(o.result),
            )
            for s, o in zip(stages, outcomes, strict=True)
        ]

    async def update_stages(self, changes: Sequence[StageChange]) -> None:
        commands = []
        for change in changes:
            fields: dict[str, Any] = {}
            if change.name is not None:
                fields["NAME"] = change.name
            if change.sort is not None:
                fields["SORT"] = change.sort
            if change.color is not None:
                fields["COLOR"] = change.color
            if fields:
                commands.append(
                    (
                        change.stage.id,
                        "crm.status.update",
                        {"id": int(change.stage.row_id or 0), "fields": fields},
                    )
                )
        self._raise_first(await self.transport.batch(commands, idempotent=True))

    async def delete_stages(self, stages: Sequence[Stage]) -> None:
        commands = []
        for stage in stages:
            params: dict[str, Any] = {"id": int(stage.row_id or 0)}
            if stage.system:  # system elements (NEW...) need FORCED=Y (DOCS crm-status-delete.md)
                params["params"] = {"FORCED": "Y"}
            commands.append((stage.id, "crm.status.delete", params))
        self._raise_first(await self.transport.batch(commands, idempotent=True))

    async def count_deals_in_stages(self, stages: Sequence[Stage]) -> dict[str, int]:
        """Deals per stage (a stage with deals must not be deleted): one list command per stage with
        select ID, reading each command's `result_total`."""
        commands = [
            (
                s.id,
                "crm.deal.list",
                {"filter": {"STAGE_ID": s.id, "CATEGORY_ID": s.pipeline_id}, "select": ["ID"]},
            )
            for s in stages
        ]
        counts: dict[str, int] = {}
        for outcome in await self.transport.batch(commands, idempotent=True):
            if outcome.error is not None:
                raise outcome.error
            counts[outcome.ref] = outcome.total if outcome.total is not None else len(outcome.result or [])
        return counts

    # --- custom fields and loss reasons ------------------------------------------------------------

    async def list_fields(self) -> list[CustomField]:
        rows: list[dict[str, Any]] = []
        start: int | None = 0
        while start is not None:
            body = await self.transport.call(
                "crm.deal.userfield.list",
                {"order": {"SORT": "ASC"}, "filter": {"LANG": "en"}, "start": start},
            )
            rows.extend(body.get("result") or [])
            start = body.get("next")
        return [field_from_row(r) for r in rows]

    async def create_fields(self, fields: Sequence[NewField]) -> list[CustomField]:
        commands = []
        for f in fields:
            spec: dict[str, Any] = {
                "FIELD_NAME": f.code.upper(),  # stored as UF_CRM_{CODE}: prefix added by the portal
                "USER_TYPE_ID": USER_TYPES[f.type],
                "LABEL": f.name,
                "XML_ID": f.code,
                "SORT": f.sort,
                "MULTIPLE": "N",
                "MANDATORY": "N",
                "SHOW_FILTER": "Y",
            }
            if f.type == "enum":
                spec["LIST"] = [
                    {"VALUE": o, "SORT": (i + 1) * 10, "DEF": "N"} for i, o in enumerate(f.options)
                ]
            commands.append((f.code, "crm.deal.userfield.add", {"fields": spec}))
        outcomes = await self.transport.batch(commands, idempotent=False)
        self._raise_first(outcomes)
        # crm.deal.userfield.add answers only the numeric id: read the fields back for names and the
        # ids the portal gave the enumeration options.
        by_id = {f.id: f for f in await self.list_fields()}
        return [by_id[str(o.result)] for o in outcomes if str(o.result) in by_id]

    async def set_field_requirements(self, requirements: Sequence[FieldRequirement]) -> None:
        if requirements:
            raise NotSupported(
                "Bitrix24 has no REST API for stage-dependent required fields; FunnelSync enforces them itself"
            )

    async def list_loss_reasons(self) -> list[LossReason]:
        raise NotSupported("Bitrix24 has no loss reasons: use an enumeration user field on deals")

    async def create_loss_reasons(self, names: Sequence[str]) -> list[LossReason]:
        raise NotSupported("Bitrix24 has no loss reasons: use an enumeration user field on deals")

    # --- deals: reads ------------------------------------------------------------------------------

    async def get_deals(self, ids: Sequence[str]) -> list[DealSnapshot]:
        """50 ids per `crm.deal.list` command (@ID filter), 50 commands per batch: 2,500 deals a request."""
        commands = [
            (
                str(i),
                "crm.deal.list",
                {"filter": {"@ID": [int(x) for x in chunk]}, "select": DEAL_SELECT, "order": {"ID": "ASC"}},
            )
            for i, chunk in enumerate(chunked(list(ids), PAGE))
        ]
        deals: list[DealSnapshot] = []
        for outcome in await self.transport.batch(commands, idempotent=True):
            if outcome.error is not None:
                raise outcome.error
            deals.extend(deal_from_row(r) for r in outcome.result or [])
        return deals

    async def list_deals_modified_since(self, since: datetime) -> AsyncIterator[list[DealSnapshot]]:
        """Deals with DATE_MODIFY >= since, in pages of <= 50 in ascending ID order (not modify
        order). `>=` rather than `>`: DATE_MODIFY has one-second resolution, so a strict filter would
        skip deals changed in the cursor's second; re-reading one is harmless (the mirror is
        idempotent). Paged by ID like the full pull, never by offset: a deal changed during the pull
        keeps its ID, while in modify order it would jump to the end and shift every later row up one
        place, so the first row of the next offset page would never be served (docs/crm/bitrix24.md
        §2). A caller resuming from a page's newest DATE_MODIFY must therefore wait for the
        whole pull: a later page can hold older changes."""
        when = since if since.tzinfo else since.replace(tzinfo=UTC)
        async for page in self._pull_by_id({">=DATE_MODIFY": when.isoformat(timespec="seconds")}):
            yield page

    async def list_all_deals(self) -> AsyncIterator[list[DealSnapshot]]:
        """Every deal, in ascending ID order (see _pull_by_id)."""
        async for page in self._pull_by_id({}):
            yield page

    async def _pull_by_id(self, filters: Mapping[str, Any]) -> AsyncIterator[list[DealSnapshot]]:
        """Deals matching `filters` in fast mode (DOCS list-methods-pecularities.md, huge-data.md):
        `start=-1`, order by ID, `>ID` filter. One batch chains 50 commands, each filtering on the
        previous command's last row through `$result[cN][49][ID]` (DOCS batch.md: list results are
        referenced as `$result[cmd][0][ID]`; b24pysdk call_list_fast.py does the same), so 2,500
        deals cost one request. The chain stops at the first short page; later commands are ignored."""
        last_id = 0
        while True:
            commands: list[tuple[str, str, Mapping[str, Any]]] = []
            for i in range(MAX_BATCH):
                boundary: Any = last_id if i == 0 else f"$result[c{i - 1}][{PAGE - 1}][ID]"
                commands.append(
                    (
                        str(i),
                        "crm.deal.list",
                        {
                            "order": {"ID": "ASC"},
                            "filter": {**filters, ">ID": boundary},
                            "select": DEAL_SELECT,
                            "start": -1,
                        },
                    )
                )
            outcomes = await self.transport.batch(commands, idempotent=True)
            for outcome in outcomes:
                if outcome.error is not None:
                    raise outcome.error
                rows = list(outcome.result or [])
                if rows:
                    yield [deal_from_row(r) for r in rows]
                if len(rows) < PAGE:
                    return
                new_last = int(rows[-1]["ID"])
                if new_last <= last_id:
                    raise PermanentError(f"fast pagination did not advance past deal {last_id}")
                last_id = new_last

    # --- deals: writes -----------------------------------------------------------------------------

    @staticmethod
    def _items(outcomes: Sequence[Outcome], crm_ids: Sequence[str | None]) -> list[ItemResult]:
        return [
            ItemResult(ref=o.ref, error=o.error) if o.error else ItemResult(ref=o.ref, crm_id=crm_id)
            for o, crm_id in zip(outcomes, crm_ids, strict=True)
        ]

    async def move_deals(self, moves: Sequence[StageMove]) -> list[ItemResult]:
        """crm.item.update with categoryId + stageId (moves across pipelines need categoryId); the
        returned item is compared with the request because a stage can be dropped silently (ref 0.5)."""
        commands = [
            (
                m.ref,
                "crm.item.update",
                {
                    "entityTypeId": 2,
                    "id": int(m.deal_id),
                    "fields": {"categoryId": int(m.pipeline_id), "stageId": m.stage_id},
                },
            )
            for m in moves
        ]
        outcomes = await self.transport.batch(commands, idempotent=True)
        results = []
        for move, outcome in zip(moves, outcomes, strict=True):
            if outcome.error is not None:
                results.append(ItemResult(ref=move.ref, error=outcome.error))
                continue
            item = (outcome.result or {}).get("item") if isinstance(outcome.result, dict) else None
            got = str(item.get("stageId")) if isinstance(item, dict) else move.stage_id
            if got != move.stage_id:
                err = PermanentError(
                    f"Bitrix24 kept deal {move.deal_id} in stage {got} instead of {move.stage_id}",
                    item_ref=move.ref,
                )
                results.append(ItemResult(ref=move.ref, error=err))
            else:
                results.append(ItemResult(ref=move.ref, crm_id=move.deal_id))
        return results

    async def create_tasks(self, tasks: Sequence[NewTask]) -> list[ItemResult]:
        commands = [
            (
                t.ref,
                "tasks.task.add",
                {
                    "fields": {
                        "TITLE": t.title,
                        "DESCRIPTION": t.description,
                        "RESPONSIBLE_ID": int(t.responsible_id or self.default_responsible_id),
                        "DEADLINE": _iso(t.due_at),
                        "UF_CRM_TASK": [f"D_{t.deal_id}"],
                    }
                },
            )
            for t in tasks
        ]
        outcomes = await self.transport.batch(commands, idempotent=False)
        ids = [
            str(o.result["task"]["id"])
            if o.error is None and isinstance(o.result, dict) and "task" in o.result
            else None
            for o in outcomes
        ]
        return self._items(outcomes, ids)

    async def move_task_deadlines(self, changes: Sequence[TaskDeadline]) -> list[ItemResult]:
        """tasks.task.update(taskId, fields{DEADLINE}) per change, packed into batch (docs:
        dev.1c-bitrix.ru rest_help tasks.task.update). Setting a deadline again is harmless, so
        these are resent after a timeout."""
        commands = [
            (c.ref, "tasks.task.update", {"taskId": int(c.task_id), "fields": {"DEADLINE": _iso(c.due_at)}})
            for c in changes
        ]
        outcomes = await self.transport.batch(commands, idempotent=True)
        return self._items(outcomes, [c.task_id for c in changes])

    async def find_created(self, kind: CreatedKind, lookups: Sequence[CreatedLookup]) -> dict[str, str]:
        """Deals: see _find_created_deals. Otherwise one list command per deal, packed into batch: tasks.task.list filtered by the deal binding
        (UF_CRM_TASK "D_{id}", newest first), or crm.timeline.comment.list {ENTITY_ID, ENTITY_TYPE:
        deal} (dev.1c-bitrix.ru). Only the first page (50) of a deal's items is read: what we look
        for was created moments before the crash, so it is among the newest."""
        if kind == "deal":
            return await self._find_created_deals(lookups)
        deals = sorted({item.deal_id for item in lookups})
        if kind == "task":
            commands = [
                (deal, "tasks.task.list", {"filter": {"UF_CRM_TASK": f"D_{deal}"}, "select": ["ID", "DESCRIPTION"],
                                           "order": {"ID": "desc"}})
                for deal in deals
            ]  # fmt: skip
        else:
            commands = [
                (deal, "crm.timeline.comment.list", {"filter": {"ENTITY_ID": int(deal), "ENTITY_TYPE": "deal"},
                                                     "select": ["ID", "COMMENT"], "order": {"ID": "desc"}})
                for deal in deals
            ]  # fmt: skip
        texts: dict[str, list[tuple[str, str]]] = {}
        for deal, outcome in zip(deals, await self.transport.batch(commands, idempotent=True), strict=True):
            if outcome.error is not None:
                raise outcome.error
            rows = outcome.result.get("tasks", []) if isinstance(outcome.result, dict) else outcome.result
            texts[deal] = [
                (
                    str(r.get("id") or r.get("ID")),
                    str(r.get("description") or r.get("DESCRIPTION") or r.get("COMMENT") or ""),
                )
                for r in rows or []
            ]
        found: dict[str, str] = {}
        for item in lookups:
            for crm_id, text in texts.get(item.deal_id, []):
                if item.marker in text:
                    found[item.ref] = crm_id
                    break
        return found

    async def add_comments(self, comments: Sequence[NewComment]) -> list[ItemResult]:
        commands = [
            (
                c.ref,
                "crm.timeline.comment.add",
                {"fields": {"ENTITY_ID": int(c.deal_id), "ENTITY_TYPE": "deal", "COMMENT": c.text}},
            )
            for c in comments
        ]
        outcomes = await self.transport.batch(commands, idempotent=False)
        return self._items(outcomes, [None if o.error else str(o.result) for o in outcomes])

    async def update_deal_fields(self, updates: Sequence[FieldUpdate]) -> list[ItemResult]:
        """crm.deal.update: user fields by UF_CRM_* name, the amount as OPPORTUNITY. Bitrix24 has no
        loss-reason API (its reasons are a user field), so an update naming a native reason id is
        refused on its own and the others still go."""
        refused = {
            u.ref: ItemResult(u.ref, error=NotSupported("Bitrix24 has no loss-reason API", item_ref=u.ref))
            for u in updates
            if u.loss_reason_id is not None
        }
        sent = [u for u in updates if u.ref not in refused]
        commands = [
            (u.ref, "crm.deal.update", {"id": int(u.deal_id), "fields": _deal_values(u)}) for u in sent
        ]
        outcomes = await self.transport.batch(commands, idempotent=True) if commands else []
        done = {r.ref: r for r in self._items(outcomes, [u.deal_id for u in sent])}
        return [refused.get(u.ref) or done[u.ref] for u in updates]

    # --- contacts and new deals --------------------------------------------------------------------

    async def get_deal_contacts(self, deal_ids: Sequence[str]) -> dict[str, list[ContactInfo]]:
        """Two batched reads: crm.deal.contact.items.get per deal (its bindings with IS_PRIMARY and
        SORT), then crm.contact.list with `@ID` and an explicit select of the multi-fields, 50 ids
        a command (DOCS crm-deal-contact-items-get.md, crm-contact-list.md). 50 deals cost two
        requests; a deal that is gone ("Not found.") has no contacts."""
        wanted = list(dict.fromkeys(str(d) for d in deal_ids if str(d).isdigit()))
        bindings = await self._contact_bindings(wanted)
        contact_ids = list(dict.fromkeys(cid for pairs in bindings.values() for cid, _ in pairs))
        rows = await self._contact_rows(contact_ids)
        out: dict[str, list[ContactInfo]] = {str(d): [] for d in deal_ids}
        for deal_id, pairs in bindings.items():
            out[deal_id] = [
                contact_from_row(rows[cid], is_primary=primary) for cid, primary in pairs if cid in rows
            ]
        return out

    async def _contact_bindings(self, deal_ids: Sequence[str]) -> dict[str, list[tuple[str, bool]]]:
        commands = [(d, "crm.deal.contact.items.get", {"id": int(d)}) for d in deal_ids]
        bindings: dict[str, list[tuple[str, bool]]] = {}
        for outcome in await self.transport.batch(commands, idempotent=True):
            if outcome.error is not None:
                if "not found" in outcome.error.crm_text.lower():
                    continue  # deleted since: no one to write to
                raise outcome.error
            bindings[outcome.ref] = bindings_in_order(outcome.result)
        return bindings

    async def _contact_rows(self, contact_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        commands = [
            (
                str(i),
                "crm.contact.list",
                {"filter": {"@ID": [int(c) for c in chunk]}, "select": CONTACT_SELECT},
            )
            for i, chunk in enumerate(chunked(list(contact_ids), PAGE))
        ]
        rows: dict[str, dict[str, Any]] = {}
        for outcome in await self.transport.batch(commands, idempotent=True):
            if outcome.error is not None:
                raise outcome.error
            rows.update({str(r["ID"]): r for r in outcome.result or [] if isinstance(r, dict)})
        return rows

    async def create_deals(self, items: Sequence[NewDeal]) -> list[ItemResult]:
        """crm.item.add (entityTypeId 2) per deal, packed into batch: title, categoryId, stageId,
        assignedById, contactIds (the first is the primary), custom fields under their UF_CRM_*
        names (useOriginalUfNames Y), and originatorId/originId = FunnelSync/the marker (DOCS
        crm-item-add.md). Never resent after a timeout: a lost answer is settled by looking the
        marker up (find_created "deal"), the way tasks and comments are."""
        commands = [(item.ref, "crm.item.add", self._deal_params(item)) for item in items]
        outcomes = await self.transport.batch(commands, idempotent=False)
        ids = [
            str(o.result["item"]["id"])
            if o.error is None and isinstance(o.result, dict) and isinstance(o.result.get("item"), dict)
            else None
            for o in outcomes
        ]
        return self._items(outcomes, ids)

    def _deal_params(self, item: NewDeal) -> dict[str, Any]:
        fields: dict[str, Any] = {
            **dict(item.fields),
            "title": item.title,
            "categoryId": int(item.pipeline_id),
            "stageId": item.stage_id,
            "assignedById": int(item.responsible_id or self.default_responsible_id),
        }
        if item.amount is not None:
            fields["opportunity"] = float(item.amount)
        if item.contact_ids:
            fields["contactIds"] = [int(c) for c in item.contact_ids]
        if item.marker:
            fields["originatorId"] = ORIGINATOR
            fields["originId"] = item.marker
        return {"entityTypeId": 2, "useOriginalUfNames": "Y", "fields": fields}

    async def _find_created_deals(self, lookups: Sequence[CreatedLookup]) -> dict[str, str]:
        """Deals we created carry ORIGINATOR_ID "funnelsync" and the marker in ORIGIN_ID (both
        documented deal fields, exact-match filters): crm.deal.list with `@ORIGIN_ID`, 50 markers
        a command, all in one batch."""
        markers = list(dict.fromkeys(item.marker for item in lookups))
        commands = [
            (
                str(i),
                "crm.deal.list",
                {
                    "filter": {"ORIGINATOR_ID": ORIGINATOR, "@ORIGIN_ID": list(chunk)},
                    "select": ["ID", "ORIGIN_ID"],
                },
            )
            for i, chunk in enumerate(chunked(markers, PAGE))
        ]
        by_marker: dict[str, str] = {}
        for outcome in await self.transport.batch(commands, idempotent=True):
            if outcome.error is not None:
                raise outcome.error
            for row in outcome.result or []:
                by_marker.setdefault(str(row.get("ORIGIN_ID")), str(row.get("ID")))
        return {item.ref: by_marker[item.marker] for item in lookups if item.marker in by_marker}

    # --- webhooks ----------------------------------------------------------------------------------

    def _require_app(self) -> None:
        if not self.transport.is_oauth:
            raise NotSupported(
                "event.bind needs an application (OAuth); with an inbound webhook configure an outgoing "
                "webhook in the Bitrix24 portal UI (Developer resources -> Outgoing webhook) for "
                "ONCRMDEALADD/ONCRMDEALUPDATE/ONCRMDEALDELETE pointing at FunnelSync's /webhooks/bitrix24/{connection} URL"
            )

    async def list_webhooks(self) -> list[WebhookSubscription]:
        self._require_app()
        rows = await self._result("event.get")
        by_url: dict[str, list[str]] = {}
        for row in rows or []:
            by_url.setdefault(str(row.get("handler")), []).append(str(row.get("event", "")).upper())
        return [
            WebhookSubscription(id=url, url=url, events=tuple(sorted(events)))
            for url, events in by_url.items()
        ]

    async def register_webhook(self, url: str, events: Sequence[str]) -> WebhookSubscription:
        """Bind `url` to the events event.get does not list for it yet. Binding a bound handler is
        an error on a real portal (400 ERROR_CORE "Unable to set event handler: Handler already
        binded", DOCS ru api-reference/events/event-bind.md), so a re-run after a partial bind would
        fail forever if it bound everything again. That answer still comes when someone else binds
        the handler between our event.get and event.bind; it means what we wanted: bound."""
        self._require_app()
        names = [_EVENT_ALIASES.get(e, e.upper()) for e in events] or list(DEAL_EVENTS)
        rows = await self._result("event.get")
        bound = {
            str(row.get("event", "")).upper()
            for row in rows or []
            if isinstance(row, Mapping) and str(row.get("handler")) == url
        }
        commands = [
            (name, "event.bind", {"event": name, "handler": url}) for name in names if name not in bound
        ]
        for outcome in await self.transport.batch(commands, idempotent=True):
            if outcome.error is not None and not _already_bound(outcome.error):
                raise outcome.error
        return WebhookSubscription(id=url, url=url, events=tuple(names))

    async def unregister_webhook(self, url: str) -> None:
        self._require_app()
        rows = await self._result("event.get")
        commands = [
            (f"{i}", "event.unbind", {"event": row["event"], "handler": url})
            for i, row in enumerate(rows or [])
            if str(row.get("handler")) == url
        ]
        self._raise_first(await self.transport.batch(commands, idempotent=True))

    # --- users -------------------------------------------------------------------------------------

    async def list_users(self) -> list[CrmUser]:
        """`user.get` in ID order, 50 a page by `start` (`next` in the answer), without the ACTIVE
        filter so dismissed users still have names (docs/crm/bitrix24.md §8). Needs the `user` (or
        `user_brief`/`user_basic`) scope; without it the portal answers insufficient_scope."""
        users: list[CrmUser] = []
        start: int | None = 0
        while start is not None:
            body = await self.transport.call("user.get", {"sort": "ID", "order": "ASC", "start": start})
            users.extend(_user_from_row(row) for row in body.get("result") or [] if isinstance(row, Mapping))
            start = body.get("next")
        return users


def _user_from_row(row: Mapping[str, Any]) -> CrmUser:
    """Name as the portal shows it (first name, last name); the e-mail or the id when both are empty."""
    user_id = str(row.get("ID", ""))
    name = " ".join(str(row.get(k) or "").strip() for k in ("NAME", "LAST_NAME")).strip()
    active = row.get("ACTIVE", True)
    return CrmUser(
        id=user_id,
        name=name or str(row.get("EMAIL") or "").strip() or f"#{user_id}",
        active=active if isinstance(active, bool) else str(active).upper() in ("Y", "TRUE", "1"),
    )


def _already_bound(error: PermanentError) -> bool:
    """The portal's answer to binding a handler that is bound. ERROR_CORE is the rest module's code
    for any failure, so the text decides; ERROR_HANDLER_ALREADY_EXIST, the code DOCS error-codes.md
    shows as an example for the same case, is accepted too."""
    code = str(error.crm_code or "").upper()
    if code == "ERROR_HANDLER_ALREADY_EXIST":
        return True
    return code == "ERROR_CORE" and "handler already binded" in error.crm_text.lower()


def _iso(at: datetime) -> str:
    """Bitrix24 takes ISO 8601 with an offset; a naive datetime is taken as UTC."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def _deal_values(update: FieldUpdate) -> dict[str, Any]:
    values = dict(update.values)
    if update.amount is not None:
        values["OPPORTUNITY"] = float(update.amount)
    return values
