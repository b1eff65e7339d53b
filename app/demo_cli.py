"""`funnelsync demo [--duration SECONDS] [--json]`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.markup import escape

from app.config import get_settings
from app.console import fail, out, print_json
from app.sandbox_cli import CHANNEL_SANDBOX, SANDBOX_MODULES, require_sandboxes


def summary_figure(value: object) -> str:
    """A summary figure as printed: a number, or "name n, name n" for counts by name."""
    if isinstance(value, dict):
        return ", ".join(f"{name} {count}" for name, count in value.items()) or "0"
    return str(value)


def demo_command(
    duration: Annotated[
        float | None,
        typer.Option(help="Run this many seconds, print a summary and exit (no browser needed)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    port: Annotated[int, typer.Option(help="Port of the FunnelSync service.")] = 8000,
    bitrix24_port: Annotated[int, typer.Option(help="Port of the Bitrix24 sandbox.")] = 8024,
    amocrm_port: Annotated[int, typer.Option(help="Port of the amoCRM sandbox.")] = 8025,
    # No default here: the demo's schedule (app.demo) imports the sandboxes, which this module must not.
    outage_at: Annotated[
        float | None,
        typer.Option(
            help="Seconds into the demo when the amoCRM sandbox starts answering 503 (default 30).",
            show_default=False,
        ),
    ] = None,
    outage_for: Annotated[
        float | None,
        typer.Option(help="How long the outage lasts (default 90); 0: no outage.", show_default=False),
    ] = None,
) -> None:
    """FunnelSync with a Bitrix24 and an amoCRM sandbox, provisioned and simulating a sales team."""
    if duration is not None and duration <= 0:
        fail("--duration must be a positive number of seconds")
    if (outage_at is not None and outage_at < 0) or (outage_for is not None and outage_for < 0):
        fail("--outage-at and --outage-for must not be negative")
    require_sandboxes(*SANDBOX_MODULES, CHANNEL_SANDBOX, "aiosmtpd")
    from app.demo import OUTAGE_LENGTH, OUTAGE_START, DemoPorts, cli_export_line, run_demo

    if outage_at is None:
        outage_at = OUTAGE_START
    if outage_for is None:
        outage_for = OUTAGE_LENGTH
    ports = DemoPorts(port, bitrix24_port, amocrm_port)

    def announce(url: str, token: str, inboxes: dict[str, str]) -> None:
        if as_json:
            return
        out.print(f"\n[bold]FunnelSync demo[/] is running at [link={url}]{url}[/]")
        out.print(f"  login token : {token}")
        out.print(f"  API         : {url}/docs   (Authorization: Bearer <token>)")
        # The demo keeps its data apart from the CLI's default folder: this points a shell at it.
        out.print(f"  CLI         : {escape(cli_export_line(get_settings()))}")
        out.print(
            f"  sandboxes   : Bitrix24 http://127.0.0.1:{ports.bitrix24}, amoCRM http://127.0.0.1:{ports.amocrm}"
        )
        # What the automations sent clients, as each channel's provider received it.
        out.print("  messages    : " + ", ".join(f"{channel} {url}" for channel, url in inboxes.items()))
        if outage_for:
            out.print(
                f"  outage      : from {outage_at:g} s the amoCRM sandbox answers HTTP 503 for {outage_for:g} s;"
                " what cannot be delivered ends on the Failures page, to retry from there"
            )
        out.print("  Ctrl+C stops it." if duration is None else f"  stopping in {duration:g} s.")

    try:
        result = asyncio.run(
            run_demo(
                get_settings(), ports, duration=duration, announce=announce, outage=(outage_at, outage_for)
            )
        )
    except KeyboardInterrupt:
        return
    except RuntimeError as exc:
        fail(str(exc), code=1)
    if as_json:
        print_json(result)
    else:
        out.print(" · ".join(f"{k} {summary_figure(v)}" for k, v in result.items()))
