"""`funnelsync worker [--once]`: the scheduler's jobs without the HTTP server."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer

from app import migrate
from app.config import get_settings
from app.connections.registry import ConnectorRegistry
from app.console import out, print_json
from app.db import create_engine, session_factory
from app.logging_filters import install_log_redaction
from app.scheduler import Runtime, build_scheduler, run_until_idle, stop_scheduler


def worker_command(
    once: Annotated[
        bool, typer.Option("--once", help="Process the inbox and outbox until both are empty, then exit.")
    ] = False,
) -> None:
    """Run inbox processing, outbox delivery, timers and reconciliation (any number of workers may
    share one PostgreSQL; leases keep one worker per CRM account)."""
    install_log_redaction()  # CRM errors in log lines must not name an inbound webhook's code
    settings = get_settings()
    if settings.should_auto_migrate:
        migrate.upgrade(settings.resolved_database_url)

    async def main() -> None:
        engine = create_engine(settings.resolved_database_url, settings.resolved_pool_size)
        sessions = session_factory(engine)
        runtime = Runtime(sessions, settings, ConnectorRegistry(sessions, settings))
        try:
            if once:
                inbox, outbox = await run_until_idle(runtime)
                print_json(
                    {
                        "events_processed": inbox.processed,
                        "events_failed": inbox.failed,
                        "deals": inbox.deals,
                        "commands_delivered": outbox.delivered,
                        "commands_dead": outbox.dead,
                    }
                )
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            scheduler = build_scheduler(runtime)
            scheduler.start()
            out.print("worker running; Ctrl+C stops it")
            await stop.wait()
            out.print("stopping: waiting for running jobs to finish")
            await stop_scheduler(scheduler, runtime)
        finally:
            await runtime.connectors.aclose()
            await engine.dispose()

    asyncio.run(main())
