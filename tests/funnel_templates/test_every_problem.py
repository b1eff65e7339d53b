"""Validation reports every problem in one pass, each at its line: the cross-field rules too, also
when a field is malformed; and the library takes FUNNELSYNC_TEMPLATES_DIR's folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from funnel_templates.loader import (
    SHIPPED,
    TemplateError,
    library,
    load_templates,
    parse_template_text,
    template_origins,
    use_template_dirs,
)
from tests.funnel_templates.test_validation import valid_template, write


def problems_of(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(TemplateError) as caught:
        parse_template_text(text, "mine.yaml")
    return [(p.line, p.field, p.reason) for p in caught.value.problems]


def test_every_cross_field_rule_is_reported_at_its_line() -> None:
    data = valid_template()
    data["stages"][0]["tasks"][0]["assignee"] = "boss"
    data["stages"][0]["sla"]["escalate_to"] = "chief"
    data["stages"][1]["required_fields"] = ["nope", "amount"]
    data["stages"][3]["semantics"] = "process"  # no failure stage, and a process stage after the success
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    found = problems_of(text)
    lines = text.splitlines()
    assert {field for _, field, _ in found} == {
        "stages.NEW.tasks",
        "stages.NEW.sla",
        "stages.MEETING.required_fields",
        "stages",
        "stages.LOST.semantics",
    }
    for line, field, _ in found:  # each names a line of the part it is about
        assert line is not None
        if field == "stages.NEW.sla":
            assert lines[line - 1].strip().startswith(("sla:", "within:", "escalate_to:"))


def test_a_malformed_field_does_not_hide_the_rule_errors() -> None:
    data = valid_template()
    data["stages"][0]["color"] = "#000000"
    data["stages"][2]["temperature"] = "lukewarm"
    data["stages"][1]["follow_up"]["assignee"] = "nobody"
    found = {(field, reason.split(" ")[0]) for _, field, reason in problems_of(yaml.safe_dump(data))}
    assert found == {
        ("stages.NEW.color", "colour"),
        ("stages.WON.temperature", "Input"),
        ("stages.MEETING.follow_up", "assigns"),
    }


def test_a_malformed_code_stops_at_the_field_errors_rather_than_guess() -> None:
    """Rules read stage codes: with a code broken they are not run, so nothing false is said."""
    data = valid_template()
    data["stages"][1]["code"] = "meeting"
    data["stages"][0]["sla"]["escalate_to"] = "chief"
    assert [field for _, field, _ in problems_of(yaml.safe_dump(data))] == ["stages.meeting.code"]


def test_the_loader_reports_every_file(tmp_path: Path) -> None:
    broken = valid_template()
    broken["stages"][0]["color"] = "#000000"
    write(tmp_path, broken, "a.yaml")
    (tmp_path / "b.yaml").write_text("- not a mapping\n", encoding="utf-8")
    other = valid_template() | {"key": "test.other"}
    other["loss_reasons"] = []  # LOST requires loss_reason, which needs loss reasons
    write(tmp_path, other, "c.yaml")
    with pytest.raises(TemplateError) as caught:
        load_templates([tmp_path])
    assert sorted((Path(p.file).name, p.field) for p in caught.value.problems) == [
        ("a.yaml", "stages.NEW.color"),
        ("b.yaml", "(file)"),
        ("c.yaml", "stages.LOST.required_fields"),
    ]


@pytest.fixture
def own_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    use_template_dirs(())


def test_a_templates_dir_joins_the_library_and_replaces_by_key(own_dir: Path) -> None:
    shipped = library()
    typical = shipped["general.typical"].model_dump(mode="json")
    typical["stages"][0]["name"]["ru"] = "Наши лиды"
    write(own_dir, typical, "typical.yaml")
    write(own_dir, valid_template(), "sample.yaml")
    use_template_dirs([own_dir])
    assert len(library()) == len(shipped) + 1
    assert library()["general.typical"].stages[0].name.ru == "Наши лиды"
    assert template_origins()["general.typical"] == str(own_dir / "typical.yaml")
    assert template_origins()["test.sample"] == str(own_dir / "sample.yaml")
    assert template_origins()["auto_service.repair"] == SHIPPED
    use_template_dirs(())
    assert library()["general.typical"].stages[0].name.ru == "Лиды"
