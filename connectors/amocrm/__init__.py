"""amoCRM / Kommo API v4 connector."""

from connectors.amocrm.client import AmoCRMConnector, account_base_url, exchange_authorization_code
from connectors.amocrm.events import AmoWebhook, parse_webhook
from connectors.amocrm.oauth import OAuthApp
from connectors.amocrm.transport import reset_account_block
from connectors.base import WebhookParseError

__all__ = [
    "AmoCRMConnector",
    "AmoWebhook",
    "OAuthApp",
    "WebhookParseError",
    "account_base_url",
    "exchange_authorization_code",
    "parse_webhook",
    "reset_account_block",
]
