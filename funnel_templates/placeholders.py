"""Placeholders in automation texts (`{deal.title}`, `{contact.name}`, ...) and their renderer.

Everything between single braces is a placeholder name, so a mistyped one (`{Deal.title}`) is a
validation error rather than text that reaches a client verbatim. Values come from the deal, its
contact, its manager and the connection's settings; the caller collects them into a flat mapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")

# Placeholders every template may use; `deal.<field code>` adds one per declared field.
FIXED_PLACEHOLDERS: frozenset[str] = frozenset(
    {
        "deal.title",
        "deal.amount",
        "contact.name",
        "manager.name",
        "company.name",  # the business itself, from the connection's settings
        "optout_url",  # the contact's personal unsubscribe link
    }
)


class MissingPlaceholderValues(ValueError):
    """A text names placeholders the caller has no value for; nothing was rendered."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"no value for placeholder(s) {', '.join(names)}")
        self.names = names


def placeholders(text: str) -> list[str]:
    """The placeholder names in `text`, in order of first appearance, each once."""
    return list(dict.fromkeys(PLACEHOLDER_RE.findall(text)))


def known_placeholders(field_codes: Iterable[str]) -> frozenset[str]:
    return FIXED_PLACEHOLDERS | {f"deal.{code}" for code in field_codes}


def unknown_placeholders(text: str, field_codes: Iterable[str]) -> list[str]:
    known = known_placeholders(field_codes)
    return [name for name in placeholders(text) if name not in known]


def render(text: str, values: Mapping[str, object]) -> str:
    """Substitute every placeholder, or refuse with MissingPlaceholderValues.

    A missing, None or empty value refuses the whole text: a client must never get "Hello, !" or a
    reminder without its date, so the sender decides (skip, retry later, or fall back to a task).
    """
    missing = [name for name in placeholders(text) if values.get(name) in (None, "")]
    if missing:
        raise MissingPlaceholderValues(missing)
    return PLACEHOLDER_RE.sub(lambda match: str(values[match.group(1)]), text)
