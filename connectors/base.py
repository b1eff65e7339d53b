"""The CRM port: DTOs, the CRMConnector protocol and one error taxonomy.

Domain code speaks only these types. Each connector translates them to and from its CRM's wire
format and classifies every failure into exactly one of the error classes below, once, so callers
decide what to do (retry, back off, pause the account, dead-letter) without knowing the CRM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

# A registered CRM's name (connectors/descriptor.py): an open set, a new CRM registers its own.
CRMKind = str
StageSemantics = Literal["process", "success", "failure"]
DealEventKind = Literal["add", "update", "status", "responsible", "delete", "restore"]
CustomFieldType = Literal["string", "text", "number", "money", "date", "datetime", "enum", "boolean", "url"]
# What find_created can look up: things the outbox creates and cannot tell apart after a lost answer.
CreatedKind = Literal["task", "comment", "deal"]

# Both CRMs cap one bulk request at 50 items (Bitrix24 batch commands, amoCRM bulk POST/PATCH).
MAX_BATCH = 50


# --- errors ---------------------------------------------------------------------------------------


class CRMError(Exception):
    """Base of every connector failure. `crm_text` is the CRM's own error text, kept verbatim."""

    def __init__(
        self,
        message: str,
        *,
        crm_code: str | None = None,
        crm_text: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.crm_code = crm_code
        self.crm_text = crm_text if crm_text is not None else message
        self.status = status


class RateLimited(CRMError):
    """The CRM refused because of a rate or resource limit; retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Retryable(CRMError):
    """Transient: 5xx, timeouts, network errors. Safe to retry with backoff."""


class BatchTooLarge(Retryable):
    """The CRM timed out on the size of a write (amoCRM 504): retry with a smaller batch."""


class AuthError(CRMError):
    """Credentials expired or revoked and could not be refreshed: the connection needs attention."""


class AccountBlocked(CRMError):
    """The CRM blocked the account (amoCRM 403 after repeated limit breaches): stop calling it."""


class PermanentError(CRMError):
    """The CRM rejected the request as invalid. Never retried. `item_ref` names the failing item."""

    def __init__(self, message: str, *, item_ref: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.item_ref = item_ref


class NotSupported(PermanentError):
    """The CRM has no API for this operation (e.g. loss reasons in Bitrix24)."""


class WebhookParseError(ValueError):
    """A webhook body is not one we can read; the message says why. Parsers raise nothing else."""


# --- DTOs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """A pipeline stage as the CRM has it. `id` is what deals reference (Bitrix24 STATUS_ID such as
    "C3:NEW", amoCRM status id); `row_id` is Bitrix24's numeric row id needed to update or delete."""

    id: str
    pipeline_id: str
    name: str
    sort: int
    semantics: StageSemantics = "process"
    color: str | None = None
    system: bool = False
    row_id: str | None = None
    # False for stages the CRM does not let anyone use as a normal stage (amoCRM "unsorted").
    editable: bool = True


@dataclass(frozen=True)
class Pipeline:
    id: str
    name: str
    sort: int
    stages: tuple[Stage, ...] = ()
    is_main: bool = False


@dataclass(frozen=True)
class NewStage:
    """A stage to create. `code` is the template's stage code (Bitrix24 STATUS_ID suffix)."""

    code: str
    name: str
    sort: int
    color: str
    semantics: StageSemantics = "process"


@dataclass(frozen=True)
class StageChange:
    """Change an existing stage's name, order or colour; None means leave as is."""

    stage: Stage
    name: str | None = None
    sort: int | None = None
    color: str | None = None


@dataclass(frozen=True)
class FieldOption:
    id: str
    value: str


@dataclass(frozen=True)
class CustomField:
    """A custom deal field. `code` is our field code; `crm_name` is how the CRM names it
    (Bitrix24 FIELD_NAME "UF_CRM_...", amoCRM field `code`)."""

    id: str
    code: str | None
    crm_name: str
    name: str
    type: str
    options: tuple[FieldOption, ...] = ()
    # (pipeline id, stage id) pairs where the CRM itself requires the field. Pairs, because amoCRM's
    # won/lost ids (142/143) are the same in every pipeline.
    required_stages: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NewField:
    code: str
    name: str
    type: CustomFieldType
    options: tuple[str, ...] = ()
    sort: int = 500


@dataclass(frozen=True)
class FieldRequirement:
    """Make `field_id` required when a deal enters any of `stage_ids` (amoCRM required_statuses)."""

    field_id: str
    pipeline_id: str
    stage_ids: tuple[str, ...]


@dataclass(frozen=True)
class LossReason:
    id: str
    name: str


@dataclass(frozen=True)
class DealSnapshot:
    """A deal as the CRM reports it. `fields` holds custom field values keyed by CRM field id."""

    id: str
    pipeline_id: str
    stage_id: str
    title: str
    updated_at: datetime
    created_at: datetime | None = None
    amount: Decimal | None = None
    currency: str | None = None
    responsible_id: str | None = None
    closed: bool = False
    loss_reason_id: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DealEvent:
    """One deal change parsed from a webhook. Bitrix24 sends only the id (snapshot None); amoCRM
    sends the lead. `dedupe_key` identifies the delivery so duplicates can be recognised."""

    kind: DealEventKind
    deal_id: str
    dedupe_key: str
    occurred_at: datetime | None = None
    snapshot: DealSnapshot | None = None


@dataclass(frozen=True)
class StageMove:
    ref: str  # caller's id for this item (outbox command id); results and errors name it
    deal_id: str
    pipeline_id: str
    stage_id: str


@dataclass(frozen=True)
class NewTask:
    ref: str
    deal_id: str
    title: str
    due_at: datetime
    responsible_id: str | None = None
    description: str = ""


@dataclass(frozen=True)
class TaskDeadline:
    """Move an existing CRM task (created by us; `task_id` is the CRM's id) to a new deadline."""

    ref: str
    task_id: str
    due_at: datetime


@dataclass(frozen=True)
class CreatedLookup:
    """Find a task or comment we may have created: the one on deal `deal_id` whose text contains
    `marker` (the outbox writes a marker into everything it creates, for crash recovery)."""

    ref: str
    deal_id: str
    marker: str


@dataclass(frozen=True)
class NewComment:
    ref: str
    deal_id: str
    text: str


@dataclass(frozen=True)
class FieldUpdate:
    """Values to write on a deal. `values` holds custom fields by the key the CRM writes them under
    (CRMDescriptor.field_write_key); the deal's own amount and native loss reason (an id from
    list_loss_reasons, for a CRM with `native_loss_reasons`) have their own attributes, since each CRM
    names them differently. None leaves them as they are."""

    ref: str
    deal_id: str
    values: Mapping[str, Any]
    amount: Decimal | None = None
    loss_reason_id: str | None = None


@dataclass(frozen=True)
class ContactInfo:
    """A client bound to a deal (Bitrix24 contact, amoCRM lead contact) and how to reach them.

    `phones` and `emails` are the values as the CRM stores them (no normalisation: the channel
    decides what it can use). `telegram` is a chat id or "@username" when the CRM holds one."""

    id: str
    name: str
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    telegram: str | None = None
    is_primary: bool = False


@dataclass(frozen=True)
class NewDeal:
    """A deal to create (repeat sale, win-back, a qualified lead from a bot). `fields` holds custom
        field values by CRM field id; `marker` is the outbox's "[fs:<command id>]", written where
        find_created("deal", ...) can find the deal again when the create's answer was lost. `amount` is
    the deal's own amount, in the account's default currency."""

    ref: str
    pipeline_id: str
    stage_id: str
    title: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    responsible_id: str | None = None
    contact_ids: tuple[str, ...] = ()
    marker: str | None = None
    amount: Decimal | None = None


@dataclass(frozen=True)
class ItemResult:
    """Outcome of one item of a bulk write: the CRM id it got, or the permanent error it hit."""

    ref: str
    crm_id: str | None = None
    error: PermanentError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class WebhookSubscription:
    id: str
    url: str
    events: tuple[str, ...]
    disabled: bool = False


@dataclass(frozen=True)
class AccountInfo:
    """Who we are talking to, for `connections check`: account identity and what we may do."""

    account_id: str
    name: str
    scopes: tuple[str, ...] = ()
    missing_scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What the CRM's API can do, so provisioning plans without knowing which CRM it is."""

    native_loss_reasons: bool
    required_fields_by_stage: bool
    webhook_registration_api: bool
    fixed_final_stages: bool  # the CRM creates its own won/lost stages that must be reused
    # Whether the CRM's own won/lost stages accept a new colour and sort (Bitrix24 yes, amoCRM no).
    final_stages_styleable: bool = True
    max_pipelines: int | None = None
    max_stages_per_pipeline: int | None = None
    # Stage ids the CRM derives from our stage code, e.g. Bitrix24 "C{pipeline_id}:{code}".
    stage_id_format: str | None = None
    stage_id_max_length: int | None = None


@dataclass
class TokenSet:
    """OAuth tokens. Persisted through a TokenSaver before the new access token is used."""

    access_token: str
    refresh_token: str
    expires_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)


TokenSaver = Callable[[TokenSet], Awaitable[None]]


@dataclass(frozen=True)
class CrmUser:
    """A CRM user as the dashboard names them: responsible users are stored as ids only."""

    id: str
    name: str
    active: bool = True  # False: dismissed or deactivated (still responsible for old deals)


# --- the port -------------------------------------------------------------------------------------


@runtime_checkable
class CRMConnector(Protocol):
    """Everything FunnelSync asks of a CRM. Batch-shaped methods take lists; the connector packs them
    into as few requests as the API allows and throttles per account."""

    kind: CRMKind
    capabilities: Capabilities

    async def check(self) -> AccountInfo: ...

    async def list_pipelines(self) -> list[Pipeline]: ...

    async def create_pipeline(self, name: str, sort: int, stages: Sequence[NewStage]) -> Pipeline: ...

    async def rename_pipeline(self, pipeline_id: str, name: str) -> None: ...

    async def add_stages(self, pipeline_id: str, stages: Sequence[NewStage]) -> list[Stage]: ...

    async def update_stages(self, changes: Sequence[StageChange]) -> None: ...

    async def delete_stages(self, stages: Sequence[Stage]) -> None: ...

    async def list_fields(self) -> list[CustomField]: ...

    async def create_fields(self, fields: Sequence[NewField]) -> list[CustomField]: ...

    async def set_field_requirements(self, requirements: Sequence[FieldRequirement]) -> None: ...

    async def list_loss_reasons(self) -> list[LossReason]: ...

    async def create_loss_reasons(self, names: Sequence[str]) -> list[LossReason]: ...

    async def count_deals_in_stages(self, stages: Sequence[Stage]) -> dict[str, int]: ...

    async def get_deals(self, ids: Sequence[str]) -> list[DealSnapshot]: ...

    def list_deals_modified_since(self, since: datetime) -> AsyncIterator[list[DealSnapshot]]: ...

    def list_all_deals(self) -> AsyncIterator[list[DealSnapshot]]:
        """Every deal, in pages, in ascending numeric id order (the reconciler detects deletions
        by id range, page by page)."""
        ...

    async def move_deals(self, moves: Sequence[StageMove]) -> list[ItemResult]: ...

    async def create_tasks(self, tasks: Sequence[NewTask]) -> list[ItemResult]: ...

    async def move_task_deadlines(self, changes: Sequence[TaskDeadline]) -> list[ItemResult]: ...

    async def add_comments(self, comments: Sequence[NewComment]) -> list[ItemResult]: ...

    async def find_created(self, kind: CreatedKind, lookups: Sequence[CreatedLookup]) -> dict[str, str]:
        """ref -> CRM id of each looked-up task/comment/deal that exists (absent refs: not created).
        A deal has no id before it exists: its lookups carry the pipeline id as `deal_id`. A CRM
        with nowhere to keep a deal's marker raises NotSupported for "deal"."""
        ...

    async def update_deal_fields(self, updates: Sequence[FieldUpdate]) -> list[ItemResult]: ...

    async def get_deal_contacts(self, deal_ids: Sequence[str]) -> dict[str, list[ContactInfo]]:
        """deal id -> its contacts, primary first (every requested id is a key; a deal that is gone
        or has no contact maps to []). Batched: a few requests however many deals."""
        ...

    async def create_deals(self, items: Sequence[NewDeal]) -> list[ItemResult]:
        """Create deals in bulk; an item the CRM refuses gets its PermanentError, the rest stand.
        Not idempotent: never resent blind after a lost answer (see find_created)."""
        ...

    async def list_webhooks(self) -> list[WebhookSubscription]: ...

    async def register_webhook(self, url: str, events: Sequence[str]) -> WebhookSubscription: ...

    async def unregister_webhook(self, url: str) -> None: ...

    async def refresh_if_expiring(self, within: timedelta) -> bool:
        """Refresh OAuth tokens that expire within `within` (saved before use); False when the
        connection's auth does not expire (inbound webhook, long-lived token) or is fresh."""
        ...

    def connection_resumed(self) -> None:
        """An operator resumed the paused connection (e.g. after the CRM lifted a block): forget
        any account-level refusal this process remembers."""
        ...

    async def aclose(self) -> None: ...

    async def list_users(self) -> list[CrmUser]:
        """Every user of the account, dismissed ones included (they stay responsible for deals),
        in pages; the dashboard shows their names instead of ids."""
        ...


T = TypeVar("T")


def chunked(items: Sequence[T], size: int = MAX_BATCH) -> list[Sequence[T]]:
    """Split a sequence into consecutive chunks of at most `size` (bulk request packing)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
