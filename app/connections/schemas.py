"""Connection input/output shapes. Secrets go in, never come out.

The input of a new connection is the CRM's own model (its descriptor's `connection_input`), chosen
by the `crm` tag among the registered CRMs."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from app.connections.models import ConnectionSwitch
from connectors.descriptor import ConnectionInput, descriptors


def connection_input_models() -> dict[str, type[ConnectionInput]]:
    """CRM name -> the input model its descriptor gives, for every registered CRM."""
    return {d.name: d.connection_input for d in descriptors()}


@lru_cache(maxsize=8)
def _adapter_for(models: tuple[type[ConnectionInput], ...]) -> TypeAdapter[ConnectionInput]:
    # The union of the registered CRMs' models, told apart by their `crm` tag: pydantic then names
    # the known tags when `crm` is missing or unknown, and reports only the chosen model's errors.
    union: Any = Union[models] if len(models) > 1 else models[0]  # noqa: UP007 (built at runtime)
    return TypeAdapter(Annotated[union, Field(discriminator="crm")])


def connection_input_adapter() -> TypeAdapter[ConnectionInput]:
    """Validates connection input against the CRMs registered now (a CRM may register late)."""
    return _adapter_for(tuple(connection_input_models().values()))


def validate_connection_input(data: Any) -> ConnectionInput:
    """The registered CRM's input model for `data`. Raises pydantic's ValidationError."""
    return connection_input_adapter().validate_python(data)


class ConnectionOut(BaseModel):
    name: str
    crm: str
    base_url: str
    status: ConnectionSwitch
    paused_reason: str | None
    auth: str
    settings: dict[str, Any]
    webhook_url: str
    created_at: datetime


class CheckResult(BaseModel):
    name: str
    ok: bool
    account_id: str | None = None
    account_name: str | None = None
    scopes: list[str] = []
    missing_scopes: list[str] = []
    problem: str | None = None


class AssigneesUpdate(BaseModel):
    """PATCH body for a connection's assignees: only the keys present change, null clears."""

    model_config = ConfigDict(extra="forbid")

    supervisor_id: str | None = Field(
        default=None, description="CRM user id that receives SLA escalations; null clears it."
    )
    roles: dict[str, str | None] = Field(
        default_factory=dict,
        description="Template role code -> CRM user id; null removes the role (its tasks then go to "
        "the deal's responsible user). Roles not named here keep their user.",
    )


class RoleOut(BaseModel):
    code: str
    name_ru: str
    name_en: str


class AssigneesOut(BaseModel):
    """Who gets the tasks the rules assign to template roles, for one connection."""

    supervisor_id: str | None
    roles: dict[str, str]  # role code -> CRM user id
    available_roles: list[RoleOut]  # roles declared by the templates provisioned in this connection
