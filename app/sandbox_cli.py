"""`funnelsync sandbox bitrix24|amocrm`: run a CRM emulator for trying FunnelSync without a portal."""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any

import typer

from app.console import fail

# Development and demo code, left out of the runtime package and the service image (pyproject's
# packages.find exclude, .dockerignore). Commands import them only once they are running, so that
# `serve` and `worker` never load them.
BITRIX24_SANDBOX = "connectors.bitrix24.sandbox"
AMOCRM_SANDBOX = "connectors.amocrm.sandbox"
SANDBOX_SUPPORT = "connectors.sandbox_support"
CHANNEL_SANDBOX = "connectors.channels.sandbox"  # the demo's SMTP, Telegram and SMS sandboxes
SANDBOX_MODULES = (BITRIX24_SANDBOX, AMOCRM_SANDBOX, SANDBOX_SUPPORT)


def require_sandboxes(*modules: str) -> None:
    """Exit 2 with a clear message, not an ImportError traceback, when this install lacks them."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        fail(
            f"the sandboxes are not installed: {', '.join(missing)} missing. This is a runtime install "
            "(the package or the Docker image), which leaves them out; run the sandboxes and the demo "
            "from a source checkout (`make demo`, or `pip install -e .`)."
        )


sandbox_cli = typer.Typer(
    help="Run a local CRM emulator (same API, limits and webhooks).", no_args_is_help=True
)

PortOption = Annotated[int, typer.Option(help="Port on 127.0.0.1.")]
SpeedOption = Annotated[float, typer.Option(help="Run limits and clocks this many times faster.")]


@sandbox_cli.command("bitrix24")
def bitrix24(
    port: PortOption = 8024,
    webhook_code: Annotated[
        str, typer.Option(help="Code in the inbound webhook URL.")
    ] = "sandboxwebhookcode1",
    webhook_url: Annotated[str | None, typer.Option(help="Outgoing webhook: where deal events go.")] = None,
    app_token: Annotated[str | None, typer.Option(help="Outgoing webhook application token.")] = None,
    plan: Annotated[
        str, typer.Option(help="standard (2 req/s, burst 50) or enterprise (5/250).")
    ] = "standard",
    speed: SpeedOption = 1.0,
    state_file: Annotated[str | None, typer.Option(help="Load/save the portal state here.")] = None,
) -> None:
    """A Bitrix24 portal: inbound webhook at http://127.0.0.1:PORT/rest/1/CODE/."""
    require_sandboxes(BITRIX24_SANDBOX)
    from connectors.bitrix24.sandbox import run_sandbox

    if plan not in ("standard", "enterprise"):
        raise typer.BadParameter("plan must be standard or enterprise", param_hint="--plan")
    options: dict[str, Any] = {
        "webhook_code": webhook_code,
        "plan": plan,
        "speed": speed,
        "state_file": state_file,
    }
    # Events say which portal sent them (auth[domain]); make it the host clients call, as on a real portal.
    options["domain"] = f"127.0.0.1:{port}"
    if webhook_url:
        options["webhook_url"] = webhook_url
    if app_token:
        options["app_token"] = app_token
    run_sandbox(port, **options)


@sandbox_cli.command("amocrm")
def amocrm(
    port: PortOption = 8025,
    token: Annotated[
        str, typer.Option(help="Long-lived token accepted as Bearer.")
    ] = "sandbox-long-lived-token",
    subdomain: Annotated[str, typer.Option(help="Account subdomain.")] = "sandbox",
    speed: SpeedOption = 1.0,
    state_file: Annotated[str | None, typer.Option(help="Load/save the account state here.")] = None,
) -> None:
    """An amoCRM account at http://127.0.0.1:PORT (API v4 and the OAuth token endpoint)."""
    from pathlib import Path

    require_sandboxes(AMOCRM_SANDBOX)
    from connectors.amocrm.sandbox.app import run_sandbox

    run_sandbox(
        port,
        token=token,
        subdomain=subdomain,
        speed=speed,
        state_file=Path(state_file) if state_file else None,
    )
