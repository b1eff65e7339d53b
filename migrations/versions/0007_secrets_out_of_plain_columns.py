"""secrets out of plain columns: Bitrix24 base_url is the portal origin, stored inbox bodies lose
their application_token, recorded errors lose inbound-webhook codes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 17:40:00.000000

No decryption is needed: every Bitrix24 webhook connection has kept its full inbound-webhook URL in
its encrypted credentials (webhook_url) since connections were first stored, and the connector has
always been built from there; base_url only repeated it. Downgrade leaves the rows as they are:
older code reads the URL from the credentials too, and putting a secret back would undo the point.
"""

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the app's patterns (app.webhooks.service, connectors.http): a migration must not
# change meaning when the app's code moves on.
_FORM_TOKEN = re.compile(rb"(?:^|(?<=&))(auth(?:\[|%5[Bb])application_token(?:\]|%5[Dd])=)[^&]*")
_JSON_TOKEN = re.compile(rb'("application_token"\s*:\s*)"(?:[^"\\]|\\.)*"?')
_WEBHOOK_CODE = re.compile(r"(/rest/\d+/)[A-Za-z0-9]+(?![A-Za-z0-9])")
BATCH = 500

connections = sa.table(
    "connections", sa.column("id", sa.Integer), sa.column("crm", sa.String), sa.column("base_url", sa.String)
)
inbox = sa.table(
    "inbox_events",
    sa.column("id", sa.Integer),
    sa.column("connection_id", sa.Integer),
    sa.column("body", sa.LargeBinary),
    sa.column("error", sa.Text),
)
commands = sa.table("outbox_commands", sa.column("id", sa.Integer), sa.column("last_error", sa.Text))
attempts = sa.table("outbox_attempts", sa.column("id", sa.Integer), sa.column("error", sa.Text))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def _strip_token(body: bytes) -> bytes:
    body = _FORM_TOKEN.sub(rb"\1***", body)
    return _JSON_TOKEN.sub(rb'\1"***"', body)


def _redact(text: str | None) -> str | None:
    return None if text is None else _WEBHOOK_CODE.sub(r"\1***", text)


def _base_urls(bind: sa.Connection) -> None:
    rows = bind.execute(
        sa.select(connections.c.id, connections.c.base_url).where(connections.c.crm == "bitrix24")
    )
    for row_id, base_url in rows.all():
        if _WEBHOOK_CODE.search(urlsplit(base_url).path):  # an OAuth portal URL is left as it is
            bind.execute(
                connections.update().where(connections.c.id == row_id).values(base_url=_origin(base_url))
            )


def _rewrite(bind: sa.Connection, table: Any, column: str, change: Any, where: Any = None) -> None:
    """Apply `change` to `column` of every row, in id order and in batches (bodies can be large)."""
    last = 0
    while True:
        query = (
            sa.select(table.c.id, table.c[column]).where(table.c.id > last).order_by(table.c.id).limit(BATCH)
        )
        rows = bind.execute(query if where is None else query.where(where)).all()
        for row_id, value in rows:
            new = change(value) if value is not None else None
            if new != value:
                bind.execute(table.update().where(table.c.id == row_id).values({column: new}))
        if len(rows) < BATCH:
            return
        last = rows[-1][0]


def upgrade() -> None:
    bind = op.get_bind()
    _base_urls(bind)
    bitrix24 = sa.select(connections.c.id).where(connections.c.crm == "bitrix24")
    _rewrite(bind, inbox, "body", lambda body: _strip_token(bytes(body)), inbox.c.connection_id.in_(bitrix24))
    _rewrite(bind, inbox, "error", _redact)
    _rewrite(bind, commands, "last_error", _redact)
    _rewrite(bind, attempts, "error", _redact)


def downgrade() -> None:
    pass  # see the module's docstring: nothing to put back
