"""`funnelsync connections add|list|check|resume|assignees`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from app.config import Settings
from app.connections import health, service
from app.connections.connector import AddressRefused, connected
from app.connections.schemas import (
    AssigneesOut,
    CheckResult,
    connection_input_models,
    validate_connection_input,
)
from app.console import fail, out, print_json
from app.runtime import Sessions, run_with_database
from app.status import assignees
from connectors.descriptor import ConnectionInput

connections_cli = typer.Typer(help="CRM accounts FunnelSync talks to.", no_args_is_help=True)


def _input_models() -> dict[str, type[ConnectionInput]]:
    """CRM -> its input model, for every registered CRM."""
    return connection_input_models()


def validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"][1:] if p not in _input_models()) or "input"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


@connections_cli.command("add")
def add_command(
    name: Annotated[str, typer.Argument(help="Connection name (used in the webhook URL).")],
    crm: Annotated[str, typer.Option(help=" or ".join(_input_models()))],
    webhook_url: Annotated[str | None, typer.Option(help="Bitrix24 inbound webhook URL.")] = None,
    app_token: Annotated[
        str | None, typer.Option(help="Bitrix24 outgoing webhook application token.")
    ] = None,
    portal_url: Annotated[str | None, typer.Option(help="Bitrix24 portal URL (OAuth app).")] = None,
    refresh_token: Annotated[str | None, typer.Option(help="Bitrix24 OAuth refresh token.")] = None,
    oauth_server_url: Annotated[str | None, typer.Option(help="Bitrix24 OAuth server.")] = None,
    plan: Annotated[str | None, typer.Option(help="Bitrix24 plan: standard or enterprise.")] = None,
    subdomain: Annotated[str | None, typer.Option(help="amoCRM subdomain.")] = None,
    token: Annotated[str | None, typer.Option(help="amoCRM long-lived token.")] = None,
    client_id: Annotated[str | None, typer.Option(help="OAuth client id.")] = None,
    client_secret: Annotated[str | None, typer.Option(help="OAuth client secret.")] = None,
    redirect_uri: Annotated[str | None, typer.Option(help="amoCRM OAuth redirect URI.")] = None,
    auth_code: Annotated[str | None, typer.Option(help="amoCRM OAuth authorization code.")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="amoCRM base URL override (sandbox, kommo.com).")
    ] = None,
    supervisor_id: Annotated[str | None, typer.Option(help="CRM user id for SLA escalations.")] = None,
) -> None:
    """Add a connection; credentials are stored encrypted and never printed."""
    raw: dict[str, Any] = {
        "name": name,
        "crm": crm,
        "webhook_url": webhook_url,
        "app_token": app_token,
        "portal_url": portal_url,
        "refresh_token": refresh_token,
        "oauth_server_url": oauth_server_url,
        "plan": plan,
        "subdomain": subdomain,
        "token": token,
        "client_id": client_id,
        "client_secret": client_secret,
        "redirect_uri": redirect_uri,
        "auth_code": auth_code,
        "base_url": base_url,
        "supervisor_id": supervisor_id,
    }
    if crm not in _input_models():
        fail(f"--crm must be {' or '.join(_input_models())}, got {crm!r}")
    unused = [k for k, v in raw.items() if v is not None and k not in _fields_of(crm)]
    if unused:
        fail(f"options not used by {crm}: " + ", ".join("--" + k.replace("_", "-") for k in unused))
    try:
        data = validate_connection_input({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        fail(validation_message(exc))

    async def work(settings: Settings, sessions: Sessions) -> None:
        try:  # before an authorization code (or any credential) is sent to the address
            await service.refuse_private_urls(settings, service.input_urls(data))
        except service.CRMAddressRefused as exc:
            fail(str(exc))
        async with sessions() as session:
            # Checked before an amoCRM authorization code is spent on the exchange.
            if await _exists(session, data.name):
                fail(f"a connection named {data.name!r} already exists")
        tokens = await data.exchange_authorization()
        record = service.build_record(settings, data, tokens)
        async with sessions.begin() as session:
            try:
                await service.add_connection(session, record)
            except service.ConnectionExists as exc:
                fail(str(exc))
        out.print(
            f"connection [bold]{record.name}[/] added ({record.crm}, {service.to_out(settings, record).base_url})"
        )

    run_with_database(work)


def _fields_of(crm: str) -> set[str]:
    return set(_input_models()[crm].model_fields)


async def _exists(session: Any, name: str) -> bool:
    try:
        await service.get_connection(session, name)
    except service.ConnectionNotFound:
        return False
    return True


@connections_cli.command("list")
def list_command(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List connections (never their credentials)."""

    async def work(settings: Settings, sessions: Sessions) -> list[dict[str, Any]]:
        async with sessions() as session:
            return [
                {
                    **service.to_out(settings, r).model_dump(mode="json"),
                    "health": health.health_of(r).model_dump(mode="json"),
                }
                for r in await service.list_connections(session)
            ]

    rows = run_with_database(work)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} connection(s)")
    for column in ("name", "crm", "base url", "auth", "health", "last push", "webhook url"):
        table.add_column(column)
    for row in rows:
        state, reason = row["health"]["state"], row["health"]["reason"]  # why it is not active
        shown = escape(state + (f" ({reason})" if reason else ""))
        pushed = _when(row["health"]["last_push_at"])
        table.add_row(
            row["name"], row["crm"], row["base_url"], row["auth"], shown, pushed, row["webhook_url"]
        )
    out.print(table)


def _when(value: str | None) -> str:
    """An ISO time from the JSON rows as "YYYY-MM-DD HH:MM:SS UTC", or "never"."""
    return f"{value[:19].replace('T', ' ')} UTC" if value else "never"


@connections_cli.command("check")
def check_command(
    name: str, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Call the CRM and report the account, missing rights or a bad token in plain words."""

    async def work(settings: Settings, sessions: Sessions) -> CheckResult:
        from app.connections.check import check_connection

        try:
            async with connected(sessions, settings, name) as (record, connector):
                checked = await check_connection(record, connector, sessions)
        except service.ConnectionNotFound as exc:
            fail(str(exc))
        except AddressRefused as exc:  # the connection is paused, saying why
            fail(str(exc), code=1)
        if checked.error is None:
            await health.record_success(sessions, record.id)
        else:
            await health.record_failure(sessions, record.id, checked.error)
        return checked.result

    result = run_with_database(work)
    if as_json:
        print_json(result.model_dump(mode="json"))
    elif result.ok:
        out.print(f"[green]ok[/] {result.name}: account {result.account_name} ({result.account_id})")
        if result.scopes:
            out.print("rights: " + ", ".join(result.scopes))
    else:
        # The problem carries the CRM's words: printed as text, never as rich markup.
        out.print(f"[red]problem[/] {result.name}: {escape(result.problem or '')}")
    if not result.ok:
        raise typer.Exit(1)


@connections_cli.command("resume")
def resume_command(name: str) -> None:
    """Resume a connection paused by an auth failure or a CRM block."""

    async def work(settings: Settings, sessions: Sessions) -> None:
        async with sessions.begin() as session:
            try:
                await service.resume_connection(session, name)
            except service.ConnectionNotFound as exc:
                fail(str(exc))

    run_with_database(work)
    out.print(f"connection {name} resumed")


def _role_assignments(pairs: list[str], unset: list[str]) -> dict[str, str | None]:
    """--role CODE=ID and --unset-role CODE as one mapping (None removes); fails on bad shapes."""
    roles: dict[str, str | None] = {}
    for pair in pairs:
        code, sep, user = pair.partition("=")
        code, user = code.strip(), user.strip()
        if not sep or not code or not user:
            fail(f"--role takes CODE=USER_ID, e.g. --role mechanic=17; got {pair!r}")
        if code in roles and roles[code] != user:
            fail(f"--role {code} is given twice with different users")
        roles[code] = user
    for code in (c.strip() for c in unset):
        if not code:
            fail("--unset-role takes a role code")
        if roles.get(code) is not None:
            fail(f"role {code!r} is both set (--role) and removed (--unset-role)")
        roles[code] = None
    return roles


@connections_cli.command("assignees")
def assignees_command(
    name: Annotated[str, typer.Argument(help="Connection name.")],
    supervisor: Annotated[
        str | None, typer.Option("--supervisor", metavar="ID", help="CRM user id for SLA escalations.")
    ] = None,
    no_supervisor: Annotated[bool, typer.Option("--no-supervisor", help="Clear the supervisor.")] = False,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", metavar="CODE=ID", help="Give a template role to a CRM user (repeatable)."),
    ] = None,
    unset_role: Annotated[
        list[str] | None,
        typer.Option(
            "--unset-role",
            metavar="CODE",
            help="Remove a role; its tasks go to the deal's responsible user (repeatable).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show or set who gets the tasks the rules assign to the supervisor and to template roles."""
    if supervisor is not None and no_supervisor:
        fail("give either --supervisor or --no-supervisor, not both")
    roles = _role_assignments(role or [], unset_role or [])
    supervisor_id = None if no_supervisor else assignees.KEEP if supervisor is None else supervisor
    changing = supervisor_id is not assignees.KEEP or bool(roles)

    async def work(settings: Settings, sessions: Sessions) -> AssigneesOut:
        try:
            if not changing:
                async with sessions() as session:
                    return await assignees.get_assignees(session, name)
            async with sessions.begin() as session:
                return await assignees.set_assignees(session, name, supervisor_id=supervisor_id, roles=roles)
        except (service.ConnectionNotFound, assignees.InvalidAssignees) as exc:
            fail(str(exc))

    result = run_with_database(work)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    if changing:
        out.print(f"assignees of {name} updated")
    _print_assignees(name, result)


def _print_assignees(name: str, result: AssigneesOut) -> None:
    fallback = "- (the deal's responsible user)"
    table = Table(title=f"assignees of {name}")
    for column in ("role", "name", "user id"):
        table.add_column(column)
    table.add_row("supervisor", "Руководитель / Supervisor", result.supervisor_id or fallback)
    declared: set[str] = set()
    for spec in result.available_roles:
        declared.add(spec.code)
        table.add_row(spec.code, f"{spec.name_ru} / {spec.name_en}", result.roles.get(spec.code, fallback))
    for code, user in sorted(result.roles.items()):
        if code not in declared:  # left from a template no longer provisioned here
            table.add_row(code, "(no provisioned template declares it)", user)
    out.print(table)
    if not result.available_roles:
        out.print("No provisioned template of this connection declares roles.")
