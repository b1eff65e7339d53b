"""`funnelsync channels set|list|remove|resume|policy` and `funnelsync messages list`."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from app.config import Settings
from app.connections import service as connections
from app.console import fail, out, print_json
from app.messages import accounts
from app.messages.policy import policy_of, set_policy
from app.messages.service import BadMessageFilter, MessageFilter, list_messages
from app.runtime import Sessions, run_with_database

channels_cli = typer.Typer(
    help="Message channels of a connection: accounts and policy.", no_args_is_help=True
)
messages_cli = typer.Typer(help="The message log.", no_args_is_help=True)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key.strip():
            fail(f"{option} takes key=value, got {value!r}")
        pairs[key.strip()] = item
    return pairs


def _secrets_from_env(values: list[str]) -> dict[str, str]:
    """--secret key=ENV_VAR: the value comes from the environment, never from the command line
    (argv is visible to every user of the machine and kept in shell histories)."""
    secrets: dict[str, str] = {}
    for key, variable in _pairs(values, "--secret").items():
        value = os.environ.get(variable)
        if not value:
            fail(f"--secret {key}={variable}: the environment variable {variable} is not set or empty")
        secrets[key] = value
    return secrets


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors())


@channels_cli.command("set")
def set_command(
    connection: Annotated[str, typer.Argument(help="Connection name.")],
    channel: Annotated[str, typer.Argument(help="email, telegram, sms or webhook.")],
    config: Annotated[
        list[str] | None, typer.Option("--config", help="A setting: key=value (repeat).")
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option("--secret", help="A secret: key=ENV_VAR, read from that variable (repeat)."),
    ] = None,
) -> None:
    """Set a channel account. Email: host, port, sender, username, security (starttls|tls|none) +
    secret password. Telegram: api_base_url + secret bot_token. SMS: api_base_url, sender + secret
    api_id. Webhook: url + secret signing_secret (whsec_...)."""
    settings_in = _pairs(config or [], "--config")
    secrets_in = _secrets_from_env(secret or [])

    async def work(settings: Settings, sessions: Sessions) -> dict[str, Any]:
        async with sessions.begin() as session:
            try:
                record = await connections.get_connection(session, connection)
                account = await accounts.set_account(
                    session, settings, record, channel, settings_in, secrets_in
                )
            except ValidationError as exc:
                fail(_validation_message(exc))
            except (ValueError, LookupError) as exc:
                fail(str(exc))
            return accounts.describe(account, settings)

    shown = run_with_database(work)
    out.print(f"{channel} account of {connection} set: " + escape(_account_line(shown)))


def _account_line(account: dict[str, Any]) -> str:
    config = ", ".join(f"{k}={v}" for k, v in account["config"].items() if v is not None)
    secrets = ", ".join(f"{k}=set" for k in account["secrets"])
    paused = f" ({account['paused_reason']})" if account["paused_reason"] else ""
    return f"{config}; secrets: {secrets or 'none'}; {account['status']}{paused}"


@channels_cli.command("list")
def list_command(
    connection: str, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """The connection's channel accounts (secrets show as "set") and its messaging policy."""

    async def work(settings: Settings, sessions: Sessions) -> dict[str, Any]:
        async with sessions() as session:
            try:
                record = await connections.get_connection(session, connection)
            except LookupError as exc:
                fail(str(exc))
            rows = [accounts.describe(a, settings) for a in await accounts.list_accounts(session, record.id)]
            return {"accounts": rows, "policy": policy_of(record).model_dump()}

    data = run_with_database(work)
    if as_json:
        print_json(
            {**data, "accounts": [{**a, "updated_at": str(a["updated_at"])} for a in data["accounts"]]}
        )
        return
    table = Table(title=f"{len(data['accounts'])} channel account(s) of {connection}")
    for column in ("channel", "settings", "status"):
        table.add_column(column)
    for account in data["accounts"]:
        table.add_row(account["channel"], escape(_account_line(account)), account["status"])
    out.print(table)
    out.print("policy: " + escape(", ".join(f"{k}={v}" for k, v in data["policy"].items())))


def _account_action(connection: str, channel: str, remove: bool) -> None:
    async def work(settings: Settings, sessions: Sessions) -> None:
        async with sessions.begin() as session:
            try:
                record = await connections.get_connection(session, connection)
                if remove:
                    await accounts.remove_account(session, record, channel)
                else:
                    await accounts.resume_account(session, record, channel)
            except (ValueError, LookupError) as exc:
                fail(str(exc))

    run_with_database(work)


@channels_cli.command("remove")
def remove_command(connection: str, channel: str) -> None:
    """Remove a channel account; messages for it wait until one is set again."""
    _account_action(connection, channel, remove=True)
    out.print(f"{channel} account of {connection} removed")


@channels_cli.command("resume")
def resume_command(connection: str, channel: str) -> None:
    """Resume an account the provider refused; its queued messages go at the next run."""
    _account_action(connection, channel, remove=False)
    out.print(f"{channel} account of {connection} resumed")


@channels_cli.command("policy")
def policy_command(
    connection: str,
    timezone: Annotated[str | None, typer.Option(help="IANA time zone, e.g. Europe/Moscow.")] = None,
    quiet_hours: Annotated[str | None, typer.Option(help='e.g. 21:00-09:00; "" for none.')] = None,
    daily_limit: Annotated[int | None, typer.Option(help="Messages per contact per day.")] = None,
    language: Annotated[str | None, typer.Option(help="ru or en.")] = None,
    telegram_field: Annotated[str | None, typer.Option(help="amoCRM contact field holding Telegram.")] = None,
    company_name: Annotated[str | None, typer.Option(help="{company.name} in message texts.")] = None,
) -> None:
    """Show the messaging policy, or change the options given."""
    given = {
        "timezone": timezone,
        "quiet_hours": quiet_hours,
        "daily_limit": daily_limit,
        "language": language,
        "telegram_field": telegram_field,
        "company_name": company_name,
    }
    changes = {k: v for k, v in given.items() if v is not None}

    async def work(settings: Settings, sessions: Sessions) -> dict[str, Any]:
        async with sessions.begin() as session:
            try:
                record = await connections.get_connection(session, connection)
                policy = set_policy(record, changes) if changes else policy_of(record)
            except ValidationError as exc:
                fail(_validation_message(exc))
            except LookupError as exc:
                fail(str(exc))
            return policy.model_dump()

    policy = run_with_database(work)
    out.print(escape(", ".join(f"{k}={v}" for k, v in policy.items())))


@messages_cli.command("list")
def messages_list_command(
    connection: str,
    deal: Annotated[int | None, typer.Option(help="Local deal id (as on the dashboard).")] = None,
    status: Annotated[str | None, typer.Option(help="queued, sending, failed, sent, dead, skipped.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The connection's messages, newest first."""

    async def work(settings: Settings, sessions: Sessions) -> tuple[int, list[dict[str, Any]]]:
        async with sessions() as session:
            try:
                record = await connections.get_connection(session, connection)
                chosen = MessageFilter(record.id, deal, None, status)
            except (BadMessageFilter, LookupError) as exc:
                fail(str(exc))
            total, items = await list_messages(session, chosen, limit=limit)
        return total, [m.model_dump(mode="json") for m in items]

    total, items = run_with_database(work)
    if as_json:
        print_json({"total": total, "items": items})
        return
    table = Table(title=f"{len(items)} of {total} message(s)")
    for column in ("id", "deal", "channel", "recipient", "status", "attempts", "error", "sent"):
        table.add_column(column)
    for m in items:
        table.add_row(
            str(m["id"]),
            str(m["deal_id"] or "—"),
            m["channel"] or "—",
            escape(m["recipient"] or "—"),
            m["status"],
            str(m["attempts"]),
            escape(m["last_error"] or "—"),
            (m["sent_at"] or "—")[:19],
        )
    out.print(table)
