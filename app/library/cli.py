"""`funnelsync templates list|show|validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from app.console import err, fail, out, print_json
from app.library import service
from funnel_templates.automations import NotifyAction, QualificationSpec, describe_action, describe_trigger
from funnel_templates.loader import TemplateError, load_templates
from funnel_templates.schema import FunnelTemplate, format_duration

templates_cli = typer.Typer(help="Browse and validate the funnel template library.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@templates_cli.command("list")
def list_command(
    niche: Annotated[str | None, typer.Option(help="Only this niche.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List every funnel template."""
    if niche is not None and niche not in service.niches():
        fail(f"unknown niche {niche!r}; known: {', '.join(service.niches())}")
    templates = service.list_templates(niche)
    if as_json:
        print_json([service.as_json(t) for t in templates])
        return
    table = Table(title=f"{len(templates)} funnel templates")
    for column in ("key", "niche", "name", "goal", "stages"):
        table.add_column(column)
    for t in templates:
        table.add_row(t.key, t.niche, f"{t.name.ru}\n[dim]{t.name.en}[/]", t.goal, str(len(t.stages)))
    out.print(table)


@templates_cli.command("show")
def show_command(key: str, as_json: JsonOption = False) -> None:
    """Show one template with its stages, fields and loss reasons."""
    try:
        template = service.get_template(key)
    except service.TemplateNotFound as exc:
        fail(str(exc))
    if as_json:
        print_json(service.as_json(template))
        return
    out.print(f"[bold]{escape(template.name.ru)}[/] — {escape(template.name.en)}  [dim]({template.key})[/]")
    out.print(f"niche {template.niche} · goal {template.goal} · source {template.source}")
    out.print(_stages_table(template))
    if template.fields:
        out.print("fields: " + ", ".join(f"{f.code} ({f.type})" for f in template.fields))
    if template.loss_reasons:
        out.print("loss reasons: " + "; ".join(escape(r.name.ru) for r in template.loss_reasons))
    if template.automations:
        out.print(_automations_table(template))
    if template.qualification:
        _print_qualification(template.qualification)
    out.print("[dim]* derived from the seed's text rather than stated by it[/]")
    for note in template.notes:
        out.print(f"[dim]note: {escape(note)}[/]")


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
        list[Path] | None, typer.Argument(help="Template files or folders (default: the library).")
    ] = None,
) -> None:
    """Validate template files; exit 2 naming file, template, field and reason on the first problem."""
    try:
        templates = load_templates(paths or None)
    except TemplateError as exc:
        for problem in exc.problems:
            err.print(escape(str(problem)), highlight=False)
        raise typer.Exit(2) from None
    if not templates:
        fail("no template files found (expected *.yaml)")
    out.print(f"{len(templates)} template(s) valid")
