"""Secrets out of log lines: the amoCRM webhook secret that ends its URL (uvicorn's access log names
every request path) and a Bitrix24 inbound webhook's code (an error quoting its URL).

`install_log_redaction()` puts the filter on "uvicorn.access" (uvicorn's dictConfig adds handlers
but keeps a logger's filters, so installing it before or after uvicorn configures logging both work)
and has every other record of the process pass through the same redaction when it is created, so
no logger's configuration can let a secret through.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from connectors.http import REDACTED, redact

ACCESS_LOGGER = "uvicorn.access"
# /webhooks/<crm>/<connection>/<secret>: the third segment after /webhooks is the secret.
_WEBHOOK_SECRET = re.compile(r"(/webhooks/[^/\s?#\"]+/[^/\s?#\"]+/)[^/\s?#\"]+")


def redact_log_text(text: str) -> str:
    """A log text with webhook URL secrets and inbound-webhook codes replaced by "***"."""
    return redact(_WEBHOOK_SECRET.sub(rf"\1{REDACTED}", text))


def _redact_arg(value: Any) -> Any:
    return redact_log_text(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """Rewrites a record's string arguments (uvicorn's access formatter reads its five arguments
    itself, so they stay five), its message, and the text of its exception, so a handler formats
    only redacted text. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def redact_record(record: logging.LogRecord) -> None:
    if isinstance(record.msg, str):
        record.msg = redact_log_text(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redact_arg(arg) for arg in record.args)
    elif isinstance(record.args, dict):
        record.args = {key: _redact_arg(arg) for key, arg in record.args.items()}
    try:
        message = record.getMessage()  # arguments that are not strings (an httpx.URL) print secrets too
    except (TypeError, ValueError):  # a malformed call: the handler reports it, as without redaction
        return
    if redact_log_text(message) != message:
        record.msg, record.args = redact_log_text(message), ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Formatters print a cached exc_text instead of formatting the exception again.
        record.exc_text = redact_log_text(logging.Formatter().formatException(record.exc_info))


def install_log_redaction() -> None:
    """Install the redaction for this process (idempotent): on uvicorn's access log, and on every
    record created from now on, whichever logger it comes from."""
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "redacts_secrets", False):
        return

    def redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        redact_record(record)
        return record

    redacted_record.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacted_record)
