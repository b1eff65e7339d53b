"""Connection input/output shapes. Secrets go in, never come out."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from app.connections.models import ConnectionSwitch

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
BITRIX24_WEBHOOK_PATH_RE = re.compile(r"^/rest/(\d+)/([A-Za-z0-9]+)/?$")
AMOCRM_SUBDOMAIN_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Connection name: lowercase letters, digits, '-' and '_'.")
    supervisor_id: str | None = Field(default=None, description="CRM user id that receives SLA escalations.")

    @field_validator("name")
    @classmethod
    def _name_shape(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError(
                "name must be 1-64 characters of lowercase letters, digits, '-' and '_', "
                "starting with a letter or digit (it becomes part of the webhook URL)"
            )
        return name


def _http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http(s) URL, got {value!r}")
    return value


class Bitrix24ConnectionCreate(_Input):
    crm: Literal["bitrix24"]
    webhook_url: str | None = Field(
        default=None, description="Inbound webhook URL: https://{portal}/rest/{user}/{code}/"
    )
    app_token: SecretStr | None = Field(
        default=None, description="application_token of the outgoing webhook or app (verifies events)."
    )
    # OAuth application (local or marketplace app installed on the portal).
    portal_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    oauth_server_url: str = "https://oauth.bitrix.info"
    plan: Literal["standard", "enterprise"] = "standard"

    @model_validator(mode="after")
    def _one_auth(self) -> Bitrix24ConnectionCreate:
        oauth = [self.portal_url, self.client_id, self.client_secret, self.refresh_token]
        if self.webhook_url and any(oauth):
            raise ValueError("give either webhook_url or the OAuth app credentials, not both")
        if self.webhook_url:
            _http_url(self.webhook_url, "webhook_url")
            if not BITRIX24_WEBHOOK_PATH_RE.match(urlsplit(self.webhook_url).path):
                raise ValueError(
                    "webhook_url must look like https://{portal}/rest/{user_id}/{code}/ "
                    "(copy it from the portal's inbound webhook page)"
                )
        elif all(oauth):
            _http_url(self.portal_url or "", "portal_url")
            _http_url(self.oauth_server_url, "oauth_server_url")
        else:
            raise ValueError(
                "Bitrix24 needs webhook_url, or portal_url + client_id + client_secret + refresh_token "
                "of an installed OAuth app"
            )
        return self


class AmoCRMConnectionCreate(_Input):
    crm: Literal["amocrm"]
    subdomain: str
    base_url: str | None = Field(
        default=None, description="Override https://{subdomain}.amocrm.ru (a sandbox, or .kommo.com)."
    )
    token: SecretStr | None = Field(default=None, description="Long-lived token of a private integration.")
    client_id: str | None = None
    client_secret: SecretStr | None = None
    redirect_uri: str | None = None
    auth_code: SecretStr | None = Field(default=None, description="Authorization code (valid 20 minutes).")
    requests_per_second: float = Field(default=7, gt=0, le=50)

    @field_validator("subdomain")
    @classmethod
    def _subdomain_shape(cls, value: str) -> str:
        if not AMOCRM_SUBDOMAIN_RE.match(value):
            raise ValueError(
                "subdomain must be the account's subdomain, e.g. 'mycompany' of mycompany.amocrm.ru"
            )
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> AmoCRMConnectionCreate:
        oauth = [self.client_id, self.client_secret, self.redirect_uri, self.auth_code]
        if self.token and any(oauth):
            raise ValueError("give either token or the OAuth client credentials with auth_code, not both")
        if not self.token and not all(oauth):
            raise ValueError(
                "amoCRM needs token (long-lived), or client_id + client_secret + redirect_uri + auth_code"
            )
        if self.base_url:
            _http_url(self.base_url, "base_url")
        if self.redirect_uri:
            _http_url(self.redirect_uri, "redirect_uri")
        return self

    @property
    def resolved_base_url(self) -> str:
        return (self.base_url or f"https://{self.subdomain}.amocrm.ru").rstrip("/")


ConnectionCreate = Annotated[Bitrix24ConnectionCreate | AmoCRMConnectionCreate, Field(discriminator="crm")]


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
