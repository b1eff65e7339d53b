"""Building blocks shared by the template schema and its automations: strict models, bilingual
text, compact durations and the rule error that names the offending part of a template."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

# Roles every template may assign tasks to without declaring them: the deal's responsible user and
# the connection's configured supervisor.
BUILTIN_ROLES: frozenset[str] = frozenset({"responsible", "supervisor"})

_DURATION_RE = re.compile(r"^(\d+)\s*([smhdw])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> object:
    """Accept compact durations ("90s", "2m", "4h", "3d", "1w") besides what pydantic parses."""
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip())
        if match:
            return timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])
    return value


def format_duration(value: timedelta) -> str:
    """Inverse of parse_duration for display and JSON: the largest unit that divides exactly."""
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# Serialised back to the compact form so JSON output can be fed to the loader again.
Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, when_used="json")
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalizedText(StrictModel):
    ru: str = Field(min_length=1)
    en: str = Field(min_length=1)


class TemplateRuleError(ValueError):
    """A cross-field rule failed; `field` is the dotted path to the offending part of the template."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class TemplateRuleErrors(ValueError):
    """Every cross-field rule that failed, raised once so that an author sees them all in one pass."""

    def __init__(self, errors: list[TemplateRuleError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e}" for e in errors))
        self.errors = errors


def collect(problems: list[TemplateRuleError], check: Callable[..., Any], *args: Any) -> None:
    """Run one independent check, adding what it raises to `problems` instead of stopping there."""
    try:
        check(*args)
    except TemplateRuleErrors as exc:
        problems.extend(exc.errors)
    except TemplateRuleError as exc:
        problems.append(exc)


def raise_all(problems: list[TemplateRuleError]) -> None:
    if problems:
        raise TemplateRuleErrors(problems)


def duplicates(field: str, what: str, values: list[str]) -> list[TemplateRuleError]:
    """One error per value that appears more than once."""
    seen: set[str] = set()
    repeated: list[str] = []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    return [TemplateRuleError(field, f"duplicate {what} {value!r}") for value in repeated]


def unique(field: str, what: str, values: list[str]) -> None:
    raise_all(duplicates(field, what, values))


class TaskFields(StrictModel):
    """What a CRM task needs; shared by stage tasks and the `task` automation action."""

    title: LocalizedText
    due_in: Duration = timedelta(days=1)
    assignee: str = "responsible"
