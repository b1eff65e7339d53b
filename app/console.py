"""Shared CLI output helpers: one stdout console, one stderr console, one way to fail."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import typer
from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Exit code for bad input (unknown key, invalid file, bad option value), matching click's usage errors.
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    # Plain print (not rich) so the output is exactly the JSON, ready for jq.
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
