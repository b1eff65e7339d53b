"""The funnel templates: the library (shipped plus FUNNELSYNC_TEMPLATES_DIR), shared by the CLI and
the HTTP API so both return exactly the same data, and a company's own templates provisioned from a
file or an upload, which are kept with the connection so later plans and rules use the same
definition."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.models import Connection
from app.errors import NotFound
from funnel_templates.loader import (
    SHIPPED,
    TemplateError,
    TemplateProblem,
    library,
    parse_own_template,
    template_origins,
)
from funnel_templates.schema import FunnelTemplate

# Connection.settings key: {template key: YAML text} of the templates provisioned into the
# connection from a file or an upload (not from the library).
OWN_TEMPLATES = "templates"
# An upload larger than this is refused (HTTP 413): the largest shipped template is about 30 KB.
MAX_TEMPLATE_BYTES = 256 * 1024


class TemplateTooLarge(ValueError):
    """An upload over MAX_TEMPLATE_BYTES (HTTP 413, exit 2)."""

    def __init__(self, size: int) -> None:
        super().__init__(
            f"the file is {size / 1024:.0f} KB; a template may be at most {MAX_TEMPLATE_BYTES // 1024} KB"
        )


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


def origin(key: str) -> str:
    """SHIPPED for a template that ships with FunnelSync, else the file in FUNNELSYNC_TEMPLATES_DIR."""
    return template_origins()[key]


def is_shipped(key: str) -> bool:
    return origin(key) == SHIPPED


def as_json(template: FunnelTemplate) -> dict[str, Any]:
    """The wire form of a template: the schema's own field names, compact durations (so it can be
    fed to the loader again)."""
    return template.model_dump(mode="json")


# --- a company's own templates (a file, an upload) ---------------------------------------------


def parse_upload(data: bytes, name: str) -> tuple[FunnelTemplate, str | None]:
    """An uploaded or given template file validated like `templates validate` does (every problem
    at once), and its text to keep with the connection (None when the file is a library template
    as it is: the library's own stays in charge). Another template under a library key is refused:
    the rules and the board look templates up by key."""
    if len(data) > MAX_TEMPLATE_BYTES:
        raise TemplateTooLarge(len(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError([TemplateProblem(name, None, "(file)", "not UTF-8 text")]) from exc
    template = parse_own_template(text, name)
    known = library().get(template.key)
    if known is not None and known != template:
        reason = (
            f"the key {template.key!r} belongs to a library template; give yours a key of its own "
            f"(`funnelsync templates new --from {template.key} --key {template.niche}.my_funnel`), "
            "or put the file in FUNNELSYNC_TEMPLATES_DIR to replace the library one"
        )
        raise TemplateError([TemplateProblem(name, template.key, "key", reason)])
    return template, (None if known is not None else text)


def template_for(record: Connection, key: str) -> FunnelTemplate | None:
    """The definition a funnel of this connection was provisioned from: the company's own template
    kept with the connection, else the library's; None when neither has the key."""
    return own_template(record, key) or library().get(key)


def own_template(record: Connection, key: str) -> FunnelTemplate | None:
    """The company's own template `key` kept with this connection, or None."""
    text = _own_texts(record.settings).get(key)
    return _parsed_own(text, f"{record.name}:{key}") if text is not None else None


@lru_cache(maxsize=64)
def _parsed_own(text: str, name: str) -> FunnelTemplate:
    # Rules run per ingested batch: parse a stored text once, not on every batch.
    return parse_own_template(text, name)


def _own_texts(settings: Mapping[str, Any] | None) -> dict[str, str]:
    stored = (settings or {}).get(OWN_TEMPLATES)
    return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, Mapping) else {}


async def remember_own_template(
    sessions: async_sessionmaker[AsyncSession], record: Connection, template: FunnelTemplate, text: str
) -> None:
    """Keep the template's YAML with the connection before anything is written to the CRM, so a
    funnel created from it (even half-way, after a failure) is always read with this definition."""
    async with sessions.begin() as session:
        current = await session.get(Connection, record.id, with_for_update=True)
        if current is None:
            return
        stored = {**_own_texts(current.settings), template.key: text}
        current.settings = {**(current.settings or {}), OWN_TEMPLATES: stored}
    record.settings = {**(record.settings or {}), OWN_TEMPLATES: stored}
