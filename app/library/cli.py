"""`funnelsync templates list|show|validate|new`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from app.config import get_settings
from app.console import err, fail, out, print_json
from app.library import service
from funnel_templates.automations import NotifyAction, QualificationSpec, describe_action, describe_trigger
from funnel_templates.loader import (
    SHIPPED,
    TemplateError,
    load_templates,
    parse_template_text,
    template_file,
)
from funnel_templates.schema import TEMPLATE_KEY_RE, FunnelTemplate, format_duration

templates_cli = typer.Typer(
    help="Browse, validate and copy funnel templates (the library plus FUNNELSYNC_TEMPLATES_DIR).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@templates_cli.callback()
def _read_settings() -> None:
    """FUNNELSYNC_TEMPLATES_DIR (from the environment or `.env`) decides what the library holds."""
    get_settings()


def print_problems(exc: TemplateError) -> None:
    """Every problem on its own line (file:line: template: field: reason), never wrapped."""
    for problem in exc.problems:
        err.print(escape(str(problem)), highlight=False, soft_wrap=True)


@contextmanager
def readable_library() -> Iterator[None]:
    """A broken file in FUNNELSYNC_TEMPLATES_DIR stops every templates command with its problems."""
    try:
        yield
    except TemplateError as exc:
        print_problems(exc)
        raise typer.Exit(2) from None


@templates_cli.command("list")
def list_command(
    niche: Annotated[str | None, typer.Option(help="Only this niche.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List every funnel template and where it comes from."""
    with readable_library():
        if niche is not None and niche not in service.niches():
            fail(f"unknown niche {niche!r}; known: {', '.join(service.niches())}")
        templates = service.list_templates(niche)
        origins = {t.key: service.origin(t.key) for t in templates}
    if as_json:
        print_json([service.as_json(t) for t in templates])
        return
    out.print(_list_table(templates, origins))


def _list_table(templates: list[FunnelTemplate], origins: dict[str, str]) -> Table:
    """The key is what people copy: its column never wraps or truncates, the others give way (the
    niche is the key's first part, so it has no column of its own)."""
    table = Table(title=f"{len(templates)} funnel templates")
    table.add_column("key", no_wrap=True, min_width=max((len(t.key) for t in templates), default=3))
    table.add_column("name", overflow="fold", ratio=1)
    table.add_column("goal", overflow="fold")
    table.add_column("stages", justify="right")
    table.add_column("from", overflow="fold")
    for t in templates:
        name = f"{escape(t.name.ru)}\n[dim]{escape(t.name.en)}[/]"
        where = "library" if origins[t.key] == SHIPPED else escape(origins[t.key])
        table.add_row(t.key, name, t.goal, str(len(t.stages)), where)
    return table


@templates_cli.command("show")
def show_command(key: str, as_json: JsonOption = False) -> None:
    """Show one template with its stages, fields and loss reasons."""
    try:
        with readable_library():
            template = service.get_template(key)
    except service.TemplateNotFound as exc:
        fail(str(exc))
    if as_json:
        print_json(service.as_json(template))
        return
    out.print(f"[bold]{escape(template.name.ru)}[/] — {escape(template.name.en)}  [dim]({template.key})[/]")
    out.print(
        f"niche {template.niche} · goal {template.goal}"
        + (f" · source {template.source}" if template.source else "")
    )
    if template.description:
        out.print(escape(template.description.ru))
        out.print(f"[dim]{escape(template.description.en)}[/]")
    out.print(_stages_table(template))
    if template.fields:
        out.print("fields: " + ", ".join(f"{f.code} ({f.type})" for f in template.fields))
    if template.loss_reasons:
        out.print("loss reasons: " + "; ".join(escape(r.name.ru) for r in template.loss_reasons))
    if template.automations:
        out.print(_automations_table(template))
    if template.qualification:
        _print_qualification(template.qualification)
    out.print("[dim]* derived: the source implies it rather than states it[/]")


def _stages_table(template: FunnelTemplate) -> Table:
    stages = Table(title="stages")
    for column in ("#", "code", "name", "semantics", "temp", "required", "tasks", "sla"):
        stages.add_column(column)
    for number, stage in enumerate(template.stages, 1):
        required = ", ".join(r.field + ("*" if r.derived else "") for r in stage.required_fields)
        stages.add_row(
            str(number),
            stage.code,
            f"{escape(stage.name.ru)}\n[dim]{escape(stage.name.en)}[/]",
            stage.semantics,
            stage.temperature,
            f"{required} → {stage.on_missing_fields}" if required else "",
            "\n".join(f"{escape(t.title.ru)} ({format_duration(t.due_in)})" for t in stage.tasks),
            format_duration(stage.sla.within) if stage.sla else "",
        )
    return stages


def _automations_table(template: FunnelTemplate) -> Table:
    """Trigger, actions (channels in preference order) and the Russian message of each automation."""
    table = Table(title="automations")
    for column in ("code", "name", "trigger", "actions", "message (ru)"):
        table.add_column(column, overflow="fold")  # wrap, never cut a code
    for automation in template.automations:
        trigger = escape(describe_trigger(automation.trigger))
        if automation.only_in_stages:
            trigger += f"\n[dim]only in {', '.join(automation.only_in_stages)}[/]"
        messages = [a.message.ru for a in automation.actions if isinstance(a, NotifyAction)]
        table.add_row(
            automation.code + ("*" if automation.derived else ""),
            escape(automation.name.ru),
            trigger,
            "\n".join(escape(describe_action(a)) for a in automation.actions),
            "\n".join(escape(m) for m in messages),
        )
    return table


def _print_qualification(spec: QualificationSpec) -> None:
    out.print(
        f"qualification bot: {len(spec.questions)} questions, threshold {spec.threshold} of "
        f"{spec.max_score()} → {spec.qualified_stage}, otherwise {spec.rejected_stage}"
    )
    for question in spec.questions:
        options = ", ".join(f"{o.name.ru} ({o.score})" for o in question.options)
        line = f"  {question.code} → {question.field}: {question.text.ru}" + (
            f" [{options}]" if options else ""
        )
        out.print(escape(line))


@templates_cli.command("validate")
def validate_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Template files or folders (default: the library and FUNNELSYNC_TEMPLATES_DIR)."),
    ] = None,
) -> None:
    """Validate template files; exit 2 listing every problem: file:line, template, field and reason."""
    try:
        # Without paths: the library as the service reads it (a folder's template replacing a shipped one).
        templates = load_templates(paths) if paths else service.list_templates()
    except TemplateError as exc:
        print_problems(exc)
        raise typer.Exit(2) from None
    if not templates:
        fail("no template files found (expected *.yaml)")
    out.print(f"{len(templates)} template(s) valid")


@templates_cli.command("new")
def new_command(
    source: Annotated[
        str, typer.Option("--from", help="The template to start from, e.g. auto_service.repair.")
    ],
    key: Annotated[str | None, typer.Option(help="The new template's key (default: <from>_copy).")] = None,
    path: Annotated[Path | None, typer.Argument(help="Where to write it (default: ./<key>.yaml).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Copy a library template into a YAML file of your own, under a new key, to edit and provision."""
    with readable_library():
        try:
            service.get_template(source)
        except service.TemplateNotFound as exc:
            fail(str(exc))
        original = template_file(source).read_text(encoding="utf-8")
    new_key = key or f"{source}_copy"
    if not TEMPLATE_KEY_RE.match(new_key):
        fail(f"the key {new_key!r} must look like 'niche.funnel' (lowercase Latin letters, digits, _)")
    target = path or Path(f"{new_key}.yaml")
    if target.exists() and not force:
        fail(f"{target} exists; choose another path or add --force to overwrite it")
    text = rekeyed(original, source, new_key)
    try:
        parse_template_text(text, str(target))  # the copy is valid before anyone edits it
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror}")
    out.print(f"wrote {escape(str(target))} (template {new_key}, from {source})")
    out.print(
        f"next: edit it, `funnelsync templates validate {target}`, `funnelsync provision CONNECTION {target}`"
    )


def rekeyed(text: str, old_key: str, new_key: str) -> str:
    """The template's YAML under a new key (and the key's niche), comments kept; automations that
    open follow-on deals in this same funnel follow it to the new key."""
    niche = new_key.split(".", 1)[0]
    text = re.sub(r"(?m)^key: .*$", f"key: {new_key}", text, count=1)
    text = re.sub(r"(?m)^niche: .*$", f"niche: {niche}", text, count=1)
    return re.sub(rf"(\bfunnel: ){re.escape(old_key)}\b", rf"\g<1>{new_key}", text)
