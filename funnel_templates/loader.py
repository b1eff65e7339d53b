"""Load and validate funnel templates from YAML files.

Every problem is reported as a TemplateProblem naming the file, the line, the template key (when the
file got far enough to have one), the field path and the reason, and every problem of every file is
collected before TemplateError is raised, so `funnelsync templates validate` shows an author all of
them at once.

The library is the shipped folder plus the folders in FUNNELSYNC_TEMPLATES_DIR (os.pathsep-separated):
a template there with the key of a shipped one replaces it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from funnel_templates.automations import CreateDealAction, deal_link_problems
from funnel_templates.schema import AMOCRM_COLORS, FunnelTemplate, TemplateRuleError, TemplateRuleErrors

LIBRARY_DIR = Path(__file__).resolve().parent / "library"
TEMPLATES_DIR_ENV = "FUNNELSYNC_TEMPLATES_DIR"
# How `template_origins()` names a template that ships with FunnelSync.
SHIPPED = "library"


@dataclass(frozen=True)
class TemplateProblem:
    file: str
    template: str | None
    field: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        template = self.template or "?"
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: template {template}: {self.field}: {self.reason}"


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


# libyaml's parser when PyYAML was built with it: the library loads several times faster.
_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SEGMENT_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _line_of(root: yaml.Node | None, path: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest YAML node `path` reaches (list items named by index or by
    their `code`), so a problem points at the line to edit."""
    node, line = root, None
    for segment in path:
        found = _child(node, segment)
        if found is None:
            continue  # a discriminator tag or a part the file does not spell out
        node = found
        line = node.start_mark.line + 1
    return line


def _child(node: yaml.Node | None, segment: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        return next((v for k, v in node.value if k.value == str(segment)), None)
    if isinstance(node, yaml.SequenceNode):
        if isinstance(segment, int) or segment.isdigit():
            index = int(segment)
            item: yaml.Node | None = node.value[index] if index < len(node.value) else None
            return item
        for entry in node.value:  # a stage, field or automation named by its code
            code = _child(entry, "code")
            if isinstance(code, yaml.ScalarNode) and code.value == segment:
                found: yaml.Node = entry
                return found
    return None


def _field_segments(field: str) -> list[int | str]:
    return [int(index) if index else name for name, index in _SEGMENT_RE.findall(field)]


def _rule_errors(cause: object) -> list[TemplateRuleError]:
    if isinstance(cause, TemplateRuleErrors):
        return cause.errors
    return [cause] if isinstance(cause, TemplateRuleError) else []


def _problems_from_validation(
    file: str, raw: dict[str, Any], exc: ValidationError, root: yaml.Node | None
) -> list[TemplateProblem]:
    key = raw.get("key") if isinstance(raw.get("key"), str) else None
    errors = exc.errors()
    if not any(_rule_errors((e.get("ctx") or {}).get("error")) for e in errors):
        # The cross-field rules only run once every field has the right shape: check them on a copy
        # whose broken values are replaced by neutral ones, so one run reports both kinds.
        errors = errors + _rule_errors_despite(raw, errors)
    problems = []
    for error in errors:
        rules = _rule_errors((error.get("ctx") or {}).get("error"))
        for rule in rules:
            line = _line_of(root, _field_segments(rule.field))
            problems.append(TemplateProblem(file, key, rule.field, str(rule), line))
        if not rules:
            loc = tuple(error["loc"])
            reason = error["msg"].removeprefix("Value error, ")
            problems.append(TemplateProblem(file, key, _loc_to_path(loc, raw), reason, _line_of(root, loc)))
    return problems


# Values no cross-field rule reads (colours, temperatures, texts, durations), by field name: a broken
# one can be swapped for these without hiding or inventing a reference problem.
_NEUTRAL: dict[str, object] = {
    "color": AMOCRM_COLORS[0],
    "temperature": "cold",
    "goal": "new_sales",
    "on_missing_fields": "task",
    "derived": False,
    "ru": "-",
    "en": "-",
    "name": {"ru": "-", "en": "-"},
    "title": {"ru": "-", "en": "-"},
    "description": None,
    "due_in": "1d",
    "within": "1d",
    "after": "1d",
    "offset": "1d",
    "lead_time": "0s",
    "delay": "0s",
}


def _rule_errors_despite(raw: dict[str, Any], errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """The cross-field rule errors of `raw` with every field error neutralised; none when a field
    error cannot be (a stage code, a field type: the rules read those)."""
    patched = copy.deepcopy(raw)
    if not all(_neutralise(patched, tuple(e["loc"]), e["type"]) for e in errors):
        return []
    try:
        FunnelTemplate.model_validate(patched)
    except ValidationError as exc:
        found = exc.errors()
        if all(_rule_errors((e.get("ctx") or {}).get("error")) for e in found):
            return found
    return []


def _neutralise(raw: dict[str, Any], loc: tuple[int | str, ...], kind: str) -> bool:
    node: Any = raw
    for item in loc[:-1]:
        if isinstance(node, dict) and item not in node and node.get("kind") == item:
            continue  # a discriminator tag
        if isinstance(node, list) and isinstance(item, int) and item < len(node):
            node = node[item]
            continue
        if not isinstance(node, dict) or item not in node:
            return False
        node = node[item]
    leaf = loc[-1] if loc else None
    if not isinstance(node, dict) or not isinstance(leaf, str):
        return False
    if kind == "extra_forbidden":
        node.pop(leaf, None)
        return True
    if leaf in _NEUTRAL:
        node[leaf] = copy.deepcopy(_NEUTRAL[leaf])
        return True
    return False


def parse_template_text(text: str, name: str) -> FunnelTemplate:
    """Parse one template's YAML text (a file, an upload) into a template or raise TemplateError
    naming `name` and every problem found."""
    try:
        loader = _YamlLoader(text)
        try:
            root = loader.get_single_node()
            raw = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise TemplateError([TemplateProblem(name, None, "(file)", f"not valid YAML: {exc}")]) from exc
    if not isinstance(raw, dict):
        raise TemplateError([TemplateProblem(name, None, "(file)", "the file must hold one YAML mapping")])
    try:
        return FunnelTemplate.model_validate(raw)
    except ValidationError as exc:
        raise TemplateError(_problems_from_validation(name, raw, exc, root)) from exc


def parse_own_template(text: str, name: str) -> FunnelTemplate:
    """A template that is not in the library (a company's file, an upload), validated as
    `templates validate FILE` does: its own rules, then its `create_deal` links against the library
    and itself."""
    template = parse_template_text(text, name)
    problems = _link_problems([template], {template.key: name}, library_too=True)
    if problems:
        raise TemplateError(problems)
    return template


def parse_template_file(path: Path, display_name: str | None = None) -> FunnelTemplate:
    """Parse one YAML file into a template or raise TemplateError."""
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError([TemplateProblem(name, None, "(file)", f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise TemplateError([TemplateProblem(name, None, "(file)", "not UTF-8 text")]) from exc
    return parse_template_text(text, name)


def _yaml_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


@dataclass
class _Loaded:
    templates: list[FunnelTemplate]
    displays: dict[str, str]  # key -> the file it came from, as problems name it
    problems: list[TemplateProblem]
    files: dict[str, Path] = dataclasses.field(default_factory=dict)  # key -> the file it came from


def _parse_files(files: list[Path]) -> _Loaded:
    """Every file parsed, every problem kept, keys that two files share reported."""
    loaded = _Loaded([], {}, [])
    for file in files:
        display = _display_name(file, LIBRARY_DIR)
        try:
            template = parse_template_file(file, display)
        except TemplateError as exc:
            loaded.problems.extend(exc.problems)
            continue
        if template.key in loaded.displays:
            reason = f"duplicate template key, also in {loaded.displays[template.key]}"
            loaded.problems.append(TemplateProblem(display, template.key, "key", reason))
            continue
        loaded.displays[template.key] = display
        loaded.files[template.key] = file
        loaded.templates.append(template)
    return loaded


def load_templates(paths: Iterable[Path] | None = None) -> list[FunnelTemplate]:
    """Load every template under the given files/folders (default: the shipped library).

    Collects all problems before raising so an author sees every mistake at once, including keys
    that two files share and `create_deal` links to funnels that do not exist.
    """
    loaded = _parse_files(_yaml_files(list(paths) if paths is not None else [LIBRARY_DIR]))
    problems = loaded.problems + _link_problems(
        loaded.templates, loaded.displays, library_too=paths is not None, failed=_failed_keys(loaded)
    )
    if problems:
        raise TemplateError(problems)
    return loaded.templates


def _failed_keys(loaded: _Loaded) -> set[str]:
    return {p.template for p in loaded.problems if p.template}


def _link_problems(
    templates: list[FunnelTemplate],
    displays: dict[str, str],
    library_too: bool,
    failed: AbstractSet[str] = frozenset(),
) -> list[TemplateProblem]:
    """`create_deal` targets must be loaded templates; files outside the library may also name the
    library's (the files win when a key is in both, as they are what is being validated). A template
    linking to one that failed to parse is skipped: its problem is already reported."""
    known = {t.key: t for t in templates}
    if library_too and _names_other_funnels(templates, known):
        known = {**library(), **known}
    return [
        TemplateProblem(displays[t.key], t.key, field, reason)
        for t in templates
        if not _linked_funnels(t) & failed
        for field, reason in deal_link_problems(t, known)
    ]


def _linked_funnels(template: FunnelTemplate) -> set[str]:
    return {
        action.funnel
        for automation in template.automations
        for action in automation.actions
        if isinstance(action, CreateDealAction)
    }


def _names_other_funnels(templates: list[FunnelTemplate], known: dict[str, FunnelTemplate]) -> bool:
    return any(funnel not in known for t in templates for funnel in _linked_funnels(t))


def _display_name(file: Path, base: Path) -> str:
    try:
        return str(file.resolve().relative_to(base.parent))
    except ValueError:
        return str(file)


# --- the library: shipped templates plus FUNNELSYNC_TEMPLATES_DIR ---------------------------------


def dirs_from_env(value: str | None) -> tuple[Path, ...]:
    """FUNNELSYNC_TEMPLATES_DIR's folders (os.pathsep-separated; empty parts ignored)."""
    return tuple(Path(part).expanduser() for part in (value or "").split(os.pathsep) if part.strip())


_extra_dirs: tuple[Path, ...] = dirs_from_env(os.environ.get(TEMPLATES_DIR_ENV))


def use_template_dirs(dirs: Iterable[Path]) -> None:
    """Set the extra library folders (the app calls this with its settings, which also read `.env`).
    The library is loaded again at its next use when they change."""
    global _extra_dirs
    chosen = tuple(Path(d) for d in dirs)
    if chosen != _extra_dirs:
        _extra_dirs = chosen


def template_dirs() -> tuple[Path, ...]:
    return _extra_dirs


@dataclass(frozen=True)
class Library:
    templates: dict[str, FunnelTemplate]  # by key, sorted
    origins: dict[str, str]  # key -> SHIPPED or the file it was loaded from
    files: dict[str, Path]  # key -> the YAML file (a starting point for `templates new`)


@lru_cache(maxsize=1)
def _shipped() -> _Loaded:
    """The shipped files, parsed once whatever the extra folders are."""
    return _parse_files(_yaml_files([LIBRARY_DIR]))


@lru_cache(maxsize=4)
def _load_library(extra_dirs: tuple[Path, ...]) -> Library:
    shipped = _shipped()
    problems = list(shipped.problems)
    missing = [d for d in extra_dirs if not d.is_dir()]
    problems += [
        TemplateProblem(str(d), None, "(folder)", f"{TEMPLATES_DIR_ENV} names a folder that does not exist")
        for d in missing
    ]
    extra = _parse_files(_yaml_files([d for d in extra_dirs if d.is_dir()]))
    problems += extra.problems
    merged = {t.key: t for t in shipped.templates} | {t.key: t for t in extra.templates}
    origins = {key: SHIPPED for key in shipped.displays} | dict(extra.displays)
    displays = {**shipped.displays, **extra.displays}
    problems += _link_problems(
        list(merged.values()), displays, library_too=False, failed=_failed_keys(shipped) | _failed_keys(extra)
    )
    if problems:
        raise TemplateError(problems)
    ordered = dict(sorted(merged.items()))
    files = shipped.files | extra.files
    return Library(ordered, {key: origins[key] for key in ordered}, {key: files[key] for key in ordered})


def load_library() -> Library:
    """The shipped templates and those of the extra folders, parsed once per set of folders."""
    return _load_library(_extra_dirs)


def library() -> dict[str, FunnelTemplate]:
    """The template library, keyed by template key, in a stable order (parsed once)."""
    return load_library().templates


def template_origins() -> dict[str, str]:
    """Where each library template comes from: SHIPPED, or the file in FUNNELSYNC_TEMPLATES_DIR."""
    return load_library().origins


def template_file(key: str) -> Path:
    """The YAML file a library template was loaded from (KeyError for an unknown key)."""
    return load_library().files[key]
