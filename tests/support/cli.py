"""Run the real `funnelsync` CLI the way a user does: its argument parsing, settings from the
environment, exit codes, stdout and stderr.

`run_cli` runs the command in this process (a fresh thread, since the commands start their own event
loop), which skips the second or two a new interpreter spends importing the service: with about two
hundred invocations per suite that is minutes. `run_cli_process` starts `python -m app` for the
tests that need a real process: import costs, signals, a crash, or a command that serves until it
is stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
# What a terminal-less user gets: wide lines (no wrapping inside a key) and no colour codes.
_PLAIN = {"COLUMNS": "200", "NO_COLOR": "1"}
# One in-process command at a time: the environment and the working directory are process-wide.
_LOCK = threading.Lock()


def run_cli_process(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **_PLAIN, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The command's outcome in the shape `subprocess.run` gives, so tests read it the same way."""
    outcome: list[subprocess.CompletedProcess[str]] = []
    # A thread of its own: the commands call asyncio.run, which refuses to run inside the event
    # loop of an async test.
    thread = threading.Thread(target=lambda: outcome.append(_invoke(list(args), env, cwd)), daemon=True)
    with _LOCK:
        thread.start()
        thread.join()
    return outcome[0]


def _invoke(
    args: list[str], env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.CompletedProcess[str]:
    from app.cli import cli

    with _fresh_process_state(cwd or REPO):
        result = CliRunner().invoke(cli, args, env={**_PLAIN, **(env or {})}, catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # What the interpreter would print for an uncaught exception (the process would exit 1).
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["funnelsync", *args], result.exit_code, result.stdout, stderr)


def _process_wide_state() -> list[dict[str, Any]]:
    """The connectors' per-process registries, which a new process starts without: rate limiters
    (bound to the event loop that first used them), cached Bitrix24 tokens, blocked amoCRM
    accounts. Private names on purpose: nothing but a test should ever swap them."""
    from connectors import http
    from connectors.amocrm import transport as amocrm_transport
    from connectors.bitrix24 import transport as bitrix24_transport

    return [http._limiters, bitrix24_transport._portal_auth, amocrm_transport._blocked]  # type: ignore[list-item]


@contextmanager
def _fresh_process_state(cwd: Path) -> Iterator[None]:
    """What a new process starts with: settings read from this environment, the console sized by
    it, the working directory the test asked for."""
    from app import console
    from app.config import get_settings

    previous_cwd = Path.cwd()
    process_wide = _process_wide_state()
    saved = [dict(state) for state in process_wide]
    for state in process_wide:
        state.clear()
    get_settings.cache_clear()
    widths = console.out.width, console.err.width
    console.out.width = console.err.width = int(_PLAIN["COLUMNS"])
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(previous_cwd)
        for state, before in zip(process_wide, saved, strict=True):
            state.clear()
            state.update(before)
        console.out.width, console.err.width = widths
        get_settings.cache_clear()
