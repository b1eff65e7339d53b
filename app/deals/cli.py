"""`funnelsync sync CONNECTION [--full]`."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from app.config import Settings
from app.connections import service as connections
from app.connections.connector import connected
from app.console import err, fail, out, print_json
from app.deals.reconcile import ReconcileResult, reconcile
from app.runtime import Sessions, run_with_database
from connectors.base import CRMError


def sync_command(
    connection: Annotated[str, typer.Argument(help="Connection name.")],
    full: Annotated[bool, typer.Option("--full", help="Walk every deal and detect deletions.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Reconcile the mirror with the CRM now (incremental from the cursor, or --full), running the
    stage rules on what it finds, like the webhooks and the scheduled reconcile do."""

    async def work(settings: Settings, sessions: Sessions) -> ReconcileResult:
        overlap = timedelta(seconds=settings.reconcile_overlap_seconds)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        try:
            async with connected(sessions, settings, connection) as (record, connector):
                with Progress(*columns, console=err, disable=as_json) as progress:
                    task = progress.add_task("deals: 0", total=None)
                    seen = 0

                    def advance(count: int) -> None:
                        nonlocal seen
                        seen += count
                        progress.update(task, description=f"deals: {seen}")

                    return await reconcile(
                        sessions, record.id, connector, full=full, overlap=overlap, progress=advance
                    )
        except connections.ConnectionNotFound as exc:
            fail(str(exc))
        except CRMError as exc:
            fail(f"the CRM failed during sync ({type(exc).__name__}): {exc.crm_text}", code=1)

    result = run_with_database(work)
    summary = {
        "full": result.full,
        "deals_seen": result.deals_seen,
        "created": result.created,
        "updated": result.updated,
        "deleted": result.deleted,
        # Stage-entry work (tasks, comments...) queued for the CRM; `funnelsync worker` or a running
        # `funnelsync serve` delivers it.
        "commands_queued": result.queued,
        "cursor": result.cursor.isoformat() if result.cursor else None,
    }
    if as_json:
        print_json(summary)
    else:
        out.print(
            f"{'full' if result.full else 'incremental'} sync: {result.deals_seen} deals seen, "
            f"{result.created} new, {result.updated} updated, {result.deleted} deleted; cursor {summary['cursor']}"
        )
        if result.queued:
            out.print(f"{result.queued} CRM commands queued by the stage rules; the worker delivers them")
