"""Domain errors shared by CLI and HTTP: each entry point maps them once (exit 2 / HTTP 404)."""

from __future__ import annotations


class NotFound(LookupError):
    """A named thing (connection, template, deal, command) does not exist. The message says which
    and, where it helps, how to find the right name."""
