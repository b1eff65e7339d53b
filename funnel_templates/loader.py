"""Load and validate funnel templates from YAML files.

Every problem is reported as a TemplateError naming the file, the template key (when the file got
far enough to have one), the field path and the reason, so `funnelsync templates validate` can print
something a template author can act on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from funnel_templates.automations import CreateDealAction, deal_link_problems
from funnel_templates.schema import FunnelTemplate, TemplateRuleError

LIBRARY_DIR = Path(__file__).resolve().parent / "library"


@dataclass(frozen=True)
class TemplateProblem:
    file: str
    template: str | None
    field: str
    reason: str

    def __str__(self) -> str:
        template = self.template or "?"
        return f"{self.file}: template {template}: {self.field}: {self.reason}"


class TemplateError(Exception):
    """One or more templates are invalid."""

    def __init__(self, problems: Sequence[TemplateProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = list(problems)


def _loc_to_path(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """Render a pydantic location, naming stages by code rather than by list index."""
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            entry = node[item]
            code = entry.get("code") if isinstance(entry, dict) else None
            parts[-1:] = [
                f"{parts[-1]}.{code}" if code and parts else f"{parts[-1] if parts else ''}[{item}]"
            ]
            node = entry
        elif isinstance(node, dict) and item not in node and node.get("kind") == item:
            continue  # pydantic's discriminated-union tag ("notify"), already in the YAML as kind
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(p for p in parts if p) or "(template)"


def _problems_from_validation(file: str, raw: dict[str, Any], exc: ValidationError) -> list[TemplateProblem]:
    key = raw.get("key") if isinstance(raw.get("key"), str) else None
    problems = []
    for error in exc.errors():
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, TemplateRuleError):
            field, reason = cause.field, str(cause)
        else:
            field = _loc_to_path(tuple(error["loc"]), raw)
            reason = error["msg"].removeprefix("Value error, ")
        problems.append(TemplateProblem(file, key, field, reason))
    return problems


def parse_template_file(path: Path, display_name: str | None = None) -> FunnelTemplate:
    """Parse one YAML file into a template or raise TemplateError."""
    name = display_name or str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TemplateError([TemplateProblem(name, None, "(file)", f"cannot read: {exc.strerror}")]) from exc
    except yaml.YAMLError as exc:
        raise TemplateError([TemplateProblem(name, None, "(file)", f"not valid YAML: {exc}")]) from exc
    if not isinstance(raw, dict):
        raise TemplateError([TemplateProblem(name, None, "(file)", "the file must hold one YAML mapping")])
    try:
        return FunnelTemplate.model_validate(raw)
    except ValidationError as exc:
        raise TemplateError(_problems_from_validation(name, raw, exc)) from exc


def _yaml_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


def load_templates(paths: Iterable[Path] | None = None) -> list[FunnelTemplate]:
    """Load every template under the given files/folders (default: the shipped library).

    Collects all problems before raising so an author sees every mistake at once, including keys
    that two files share.
    """
    base = LIBRARY_DIR
    files = _yaml_files(list(paths) if paths is not None else [base])
    templates: list[FunnelTemplate] = []
    problems: list[TemplateProblem] = []
    seen: dict[str, str] = {}
    for file in files:
        display = _display_name(file, base)
        try:
            template = parse_template_file(file, display)
        except TemplateError as exc:
            problems.extend(exc.problems)
            continue
        if template.key in seen:
            problems.append(
                TemplateProblem(
                    display, template.key, "key", f"duplicate template key, also in {seen[template.key]}"
                )
            )
            continue
        seen[template.key] = display
        templates.append(template)
    if not problems:
        problems = _link_problems(templates, seen, library_too=paths is not None)
    if problems:
        raise TemplateError(problems)
    return templates


def _link_problems(
    templates: list[FunnelTemplate], displays: dict[str, str], library_too: bool
) -> list[TemplateProblem]:
    """`create_deal` targets must be loaded templates; files outside the library may also name the
    library's (the files win when a key is in both, as they are what is being validated)."""
    known = {t.key: t for t in templates}
    if library_too and _names_other_funnels(templates, known):
        known = {**library(), **known}
    return [
        TemplateProblem(displays[t.key], t.key, field, reason)
        for t in templates
        for field, reason in deal_link_problems(t, known)
    ]


def _names_other_funnels(templates: list[FunnelTemplate], known: dict[str, FunnelTemplate]) -> bool:
    return any(
        isinstance(action, CreateDealAction) and action.funnel not in known
        for t in templates
        for automation in t.automations
        for action in automation.actions
    )


def _display_name(file: Path, base: Path) -> str:
    try:
        return str(file.resolve().relative_to(base.parent))
    except ValueError:
        return str(file)


@lru_cache(maxsize=1)
def library() -> dict[str, FunnelTemplate]:
    """The shipped template library, keyed by template key, in a stable order (parsed once)."""
    return {t.key: t for t in sorted(load_templates(), key=lambda t: t.key)}
