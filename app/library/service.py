"""Read access to the shipped funnel templates, shared by the CLI and the HTTP API so both return
exactly the same data."""

from __future__ import annotations

from typing import Any

from app.errors import NotFound
from funnel_templates.loader import library
from funnel_templates.schema import FunnelTemplate


class TemplateNotFound(NotFound):
    def __init__(self, key: str) -> None:
        super().__init__(f"no template with key {key!r}; `funnelsync templates list` shows the keys")
        self.key = key


def list_templates(niche: str | None = None) -> list[FunnelTemplate]:
    templates = list(library().values())
    if niche is not None:
        templates = [t for t in templates if t.niche == niche]
    return templates


def get_template(key: str) -> FunnelTemplate:
    try:
        return library()[key]
    except KeyError:
        raise TemplateNotFound(key) from None


def niches() -> list[str]:
    return sorted({t.niche for t in library().values()})


def as_json(template: FunnelTemplate) -> dict[str, Any]:
    """The wire form of a template: the schema's own field names, compact durations."""
    return template.model_dump(mode="json")
