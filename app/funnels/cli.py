"""`funnelsync provision CONNECTION TEMPLATE|FILE.yaml [--dry-run] [--json]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from app.config import Settings, get_settings
from app.connections import service as connections
from app.connections.connector import connected
from app.connections.health import error_from, failure_line
from app.console import EXIT_BAD_INPUT, fail, out, print_json
from app.funnels.plan import Plan, PlanLimitError
from app.funnels.service import ProvisionOutcome, provision
from app.library import service as library
from app.library.cli import print_problems, readable_library
from app.runtime import Sessions, run_with_database
from connectors.base import CRMError
from funnel_templates.loader import TemplateError
from funnel_templates.schema import FunnelTemplate

# The CRM failed (down, rate-limited, refused): not the user's input, so not EXIT_BAD_INPUT.
EXIT_CRM_FAILED = 1

_STYLE = {"+": "green", "~": "yellow", "-": "red", "!": "bold red", "?": "cyan", "=": "dim"}


def plan_lines(plan: Plan) -> list[str]:
    """A terraform-like rendering: one line an item, reasons and attribute changes beneath."""
    lines = []
    for item in plan.items:
        style = _STYLE[item.symbol]
        lines.append(f"  [{style}]{item.symbol}[/] {item.kind:<11} {escape(item.summary)}")
        for attribute, (before, after) in item.changes.items():
            lines.append(f"        {attribute}: {escape(repr(before))} → {escape(repr(after))}")
        if item.reason:
            lines.append(f"        [dim]{escape(item.reason)}[/]")
    counts = plan.counts()
    lines.append(
        f"Plan: {counts.get('create', 0)} to create, {counts.get('change', 0)} to change, "
        f"{counts.get('delete', 0)} to delete, {counts.get('unchanged', 0)} unchanged, "
        f"{counts.get('blocked', 0) + counts.get('manual', 0)} cannot apply, "
        f"{counts.get('unmanaged', 0)} left alone."
    )
    return lines


def is_template_path(argument: str) -> bool:
    """A path is anything that exists as a file or ends in .yaml/.yml; anything else is a key."""
    return Path(argument).is_file() or argument.lower().endswith((".yaml", ".yml"))


def template_from_argument(argument: str) -> tuple[FunnelTemplate, str | None]:
    """The library template a key names, or the template in a file with its YAML text (kept with
    the connection when applied). Exits 2 naming every problem."""
    if not is_template_path(argument):
        with readable_library():
            try:
                return library.get_template(argument), None
            except library.TemplateNotFound as exc:
                fail(str(exc))
    path = Path(argument)
    if not path.is_file():
        fail(f"no template file {argument!r}")
    with readable_library():
        library.list_templates()  # a broken library folder is named as such, not as this file's fault
    try:
        return library.parse_upload(path.read_bytes(), argument)
    except TemplateError as exc:
        print_problems(exc)
        fail(f"{argument} is not a valid template; nothing was written")
    except library.TemplateTooLarge as exc:
        fail(f"{argument}: {exc}")
    except OSError as exc:
        fail(f"cannot read {argument}: {exc.strerror}")


def provision_command(
    connection: Annotated[str, typer.Argument(help="Connection name.")],
    template: Annotated[
        str, typer.Argument(help="Template key (e.g. auto_service.repair) or a template file (.yaml/.yml).")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; write nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Create or update a template's pipeline, stages, fields, loss reasons and webhook in the CRM."""
    get_settings()  # FUNNELSYNC_TEMPLATES_DIR, `.env` included, before the template is looked up
    spec, own_text = template_from_argument(template)

    async def work(settings: Settings, sessions: Sessions) -> ProvisionOutcome:
        try:
            async with connected(sessions, settings, connection) as (record, connector):
                return await provision(
                    sessions, settings, record, connector, spec, dry_run=dry_run, own_text=own_text
                )
        except connections.ConnectionNotFound as exc:
            fail(str(exc))
        except PlanLimitError as exc:
            fail(f"cannot provision {spec.key} into {connection}: {exc}. Nothing was written.")
        except CRMError as exc:  # while reading the CRM for the plan: before any write
            fail(f"{escape(failure_line(exc, 'provisioning'))} — nothing was written", code=EXIT_CRM_FAILED)

    outcome = run_with_database(work)
    if as_json:
        print_json(outcome.as_json())
    else:
        out.print(
            f"[bold]{spec.key}[/] → connection [bold]{connection}[/]" + (" (dry run)" if dry_run else "")
        )
        for line in plan_lines(outcome.plan):
            out.print(line, highlight=False)
        if outcome.applied:
            out.print("[green]Applied.[/]" if outcome.plan.has_writes else "[green]Nothing to change.[/]")
    if outcome.error:
        line = failure_line(error_from(outcome.error_class, outcome.error), "provisioning")
        fail(
            f"{escape(line)} — what was created before the failure is recorded: run the same command "
            "again to complete",
            code=EXIT_CRM_FAILED,
        )


__all__ = ["EXIT_BAD_INPUT", "plan_lines", "provision_command"]
