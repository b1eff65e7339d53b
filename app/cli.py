"""The `funnelsync` command line: thin commands that parse, call a service and print."""

from __future__ import annotations

import typer

from app import migrate
from app.bot.cli import bot_cli
from app.config import get_settings
from app.connections.cli import connections_cli
from app.console import out
from app.deals.cli import sync_command
from app.demo_cli import demo_command
from app.funnels.cli import provision_command
from app.library.cli import templates_cli
from app.messages.cli import channels_cli, messages_cli
from app.sandbox_cli import sandbox_cli
from app.worker_cli import worker_command

cli = typer.Typer(
    help="FunnelSync: ready-made sales funnels for Bitrix24 and amoCRM, kept in sync.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
cli.add_typer(templates_cli, name="templates")
cli.add_typer(db_cli, name="db")
cli.add_typer(connections_cli, name="connections")
cli.add_typer(channels_cli, name="channels")
cli.add_typer(messages_cli, name="messages")
cli.add_typer(bot_cli, name="bot")
cli.command("provision")(provision_command)
cli.command("sync")(sync_command)
cli.add_typer(sandbox_cli, name="sandbox")
cli.command("worker")(worker_command)
cli.command("demo")(demo_command)


@db_cli.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply database migrations."""
    migrate.upgrade(get_settings().resolved_database_url, revision)
    out.print(f"database at revision {revision}")


@db_cli.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Revert database migrations."""
    migrate.downgrade(get_settings().resolved_database_url, revision)
    out.print(f"database at revision {revision}")


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="Bind address (default FUNNELSYNC_HOST)."),
    port: int | None = typer.Option(None, help="Port (default FUNNELSYNC_PORT)."),
) -> None:
    """Run the HTTP service (webhooks, API, dashboard) and its scheduler."""
    import uvicorn

    from app.logging_filters import install_log_redaction
    from app.main import create_app

    install_log_redaction()  # the access log would print the amoCRM webhook secret of every delivery
    settings = get_settings()
    out.print(f"API token: set by FUNNELSYNC_API_TOKEN or stored in {settings.data_dir}/api-token")
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level,
    )


def main() -> None:
    cli()
