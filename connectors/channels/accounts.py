"""What it takes to reach each channel's provider: the settings (shown) and the secrets (never shown)
of one channel account, validated per channel, and the adapter built from them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.channels.base import Channel
from connectors.channels.email import SmtpChannel, message_id_for
from connectors.channels.sms import SMSRU_URL, SmsRuChannel
from connectors.channels.telegram import API_URL, TelegramChannel
from connectors.channels.webhooks import SignedWebhookChannel, signer


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/") if not parts.path.strip("/") else value


class EmailConfig(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    sender: str = Field(min_length=3)  # "Name <noreply@example.ru>" or a bare address
    username: str | None = None
    # starttls: upgrade a plain connection (port 587); tls: TLS from the start (465); none: plain.
    security: Literal["starttls", "tls", "none"] = "starttls"

    @field_validator("sender")
    @classmethod
    def _sender_has_domain(cls, sender: str) -> str:
        message_id_for("check", sender)  # ValueError naming the sender when it has no domain
        return sender


class EmailSecrets(_Strict):
    password: SecretStr | None = None


class TelegramConfig(_Strict):
    api_base_url: str = API_URL

    _url = field_validator("api_base_url")(_http_url)


class TelegramSecrets(_Strict):
    bot_token: SecretStr = Field(min_length=1)


class SmsConfig(_Strict):
    api_base_url: str = SMSRU_URL
    sender: str | None = None  # a sender name SMS.ru approved for the account

    _url = field_validator("api_base_url")(_http_url)


class SmsSecrets(_Strict):
    api_id: SecretStr = Field(min_length=1)


class WebhookConfig(_Strict):
    url: str

    _url = field_validator("url")(_http_url)


class WebhookSecrets(_Strict):
    signing_secret: SecretStr

    @field_validator("signing_secret")
    @classmethod
    def _secret_format(cls, secret: SecretStr) -> SecretStr:
        signer(secret.get_secret_value())  # ValueError (never naming the secret) when malformed
        return secret


ACCOUNT_MODELS: dict[str, tuple[type[_Strict], type[_Strict]]] = {
    "email": (EmailConfig, EmailSecrets),
    "telegram": (TelegramConfig, TelegramSecrets),
    "sms": (SmsConfig, SmsSecrets),
    "webhook": (WebhookConfig, WebhookSecrets),
}


def validate_account(
    channel: str, config: Mapping[str, Any], secrets: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(config, secrets) as plain JSON values after the channel's models checked them; ValueError
    for an unknown channel, pydantic's ValidationError for bad values (secrets never in its text)."""
    if channel not in ACCOUNT_MODELS:
        raise ValueError(f"unknown channel {channel!r}; channels are {', '.join(ACCOUNT_MODELS)}")
    config_model, secrets_model = ACCOUNT_MODELS[channel]
    checked_config = config_model.model_validate(dict(config))
    checked_secrets = secrets_model.model_validate(dict(secrets))
    plain_secrets = {
        key: value.get_secret_value() if isinstance(value, SecretStr) else value
        for key, value in checked_secrets
        if value is not None
    }
    return checked_config.model_dump(mode="json"), plain_secrets


def called_urls(channel: str, config: Mapping[str, Any]) -> list[str]:
    """The addresses the adapter sends the secrets to (for the private-address check)."""
    if channel == "email":
        return [f"smtp://{config['host']}:{config['port']}"]
    if channel == "webhook":
        return [str(config["url"])]
    return [str(config["api_base_url"])]


def build_channel(channel: str, config: Mapping[str, Any], secrets: Mapping[str, str]) -> Channel:
    """The adapter for a validated account."""
    if channel == "email":
        security = config.get("security", "starttls")
        return SmtpChannel(
            str(config["host"]),
            int(config["port"]),
            username=config.get("username"),
            password=secrets.get("password"),
            sender=str(config["sender"]),
            use_tls=security == "tls",
            start_tls=security == "starttls",
        )
    if channel == "telegram":
        return TelegramChannel(secrets["bot_token"], base_url=str(config["api_base_url"]))
    if channel == "sms":
        return SmsRuChannel(
            secrets["api_id"], sender=config.get("sender"), base_url=str(config["api_base_url"])
        )
    if channel == "webhook":
        return SignedWebhookChannel(str(config["url"]), secrets["signing_secret"])
    raise ValueError(f"unknown channel {channel!r}")
