"""Each validation rule rejects a bad template with a message naming file, template, field, reason."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from funnel_templates.loader import TemplateError, load_templates
from funnel_templates.schema import MAX_STAGES


def valid_template() -> dict[str, Any]:
    return {
        "key": "test.sample",
        "niche": "test",
        "name": {"ru": "Тест", "en": "Test"},
        "goal": "new_sales",
        "source": "001_d4fb40d7013a84ab.txt",
        "stages": [
            {
                "code": "NEW",
                "name": {"ru": "Новая", "en": "New"},
                "temperature": "cold",
                "color": "#d6eaff",
                "tasks": [{"title": {"ru": "Позвонить", "en": "Call"}, "due_in": "15m"}],
                "sla": {"within": "2m"},
            },
            {
                "code": "MEETING",
                "name": {"ru": "Встреча", "en": "Meeting"},
                "temperature": "warm",
                "color": "#ffeab2",
                "required_fields": ["meeting_at", "amount"],
                "follow_up": {"field": "meeting_at", "title": {"ru": "Встреча", "en": "Meeting"}},
            },
            {
                "code": "WON",
                "name": {"ru": "Успех", "en": "Won"},
                "semantics": "success",
                "temperature": "hot",
                "color": "#87f2c0",
            },
            {
                "code": "LOST",
                "name": {"ru": "Отказ", "en": "Lost"},
                "semantics": "failure",
                "temperature": "cold",
                "color": "#ff8f92",
                "required_fields": ["loss_reason"],
            },
        ],
        "fields": [{"code": "meeting_at", "name": {"ru": "Встреча", "en": "Meeting"}, "type": "datetime"}],
        "loss_reasons": [{"code": "spam", "name": {"ru": "Спам", "en": "Spam"}}],
    }


def write(tmp_path: Path, data: dict[str, Any], name: str = "sample.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def problems_for(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    path = write(tmp_path, data)
    with pytest.raises(TemplateError) as caught:
        load_templates([path])
    messages = [str(p) for p in caught.value.problems]
    for message in messages:
        assert re.match(rf"{re.escape(str(path))}:\d+: template ", message), message  # file:line
    return messages


def test_the_valid_sample_loads(tmp_path: Path) -> None:
    [template] = load_templates([write(tmp_path, valid_template())])
    assert template.key == "test.sample"
    assert template.stages[0].sla is not None and template.stages[0].sla.within.total_seconds() == 120


def mutate(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(valid_template())
    change(data)
    return data


def _set(path: list[Any], value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return change


# The key itself is what is wrong, so the message names the template by the bad key.
BAD_KEY = pytest.mark.template_name("Bad Key")

CASES = [
    pytest.param(
        _set(["stages", 1, "code"], "NEW"), "stages", "duplicate stage code 'NEW'", id="dup-stage-code"
    ),
    pytest.param(
        _set(["stages", 0, "code"], "new-stage"),
        "stages.new-stage.code",
        "usable as a Bitrix24 STATUS_ID",
        id="code-chars",
    ),
    pytest.param(
        _set(["stages", 0, "code"], "ПЕРВЫЙ"),
        "stages.ПЕРВЫЙ.code",
        "uppercase Latin letters",
        id="code-cyrillic",
    ),
    pytest.param(
        _set(["stages", 0, "code"], "A" * 17),
        f"stages.{'A' * 17}.code",
        "at most 16 fit in a 22-character",
        id="code-length",
    ),
    pytest.param(
        _set(["stages", 3, "semantics"], "success"), "stages", "exactly one success stage", id="two-success"
    ),
    pytest.param(
        _set(["stages", 2, "semantics"], "process"), "stages", "exactly one success", id="no-success"
    ),
    pytest.param(
        _set(["stages", 3, "semantics"], "process"), "stages", "at least one failure stage", id="no-failure"
    ),
    pytest.param(
        lambda d: d["stages"].insert(3, d["stages"].pop(1)),
        "stages.MEETING.semantics",
        "final stages must come last",
        id="process-after-final",
    ),
    pytest.param(
        lambda d: d["stages"].insert(2, d["stages"].pop(3)),
        "stages.WON.semantics",
        "success stage must come before",
        id="failure-before-success",
    ),
    pytest.param(
        _set(["stages", 0, "color"], "#123456"), "stages.NEW.color", "21-colour palette", id="colour"
    ),
    pytest.param(
        _set(["stages", 1, "required_fields"], ["budget"]),
        "stages.MEETING.required_fields",
        "undeclared field 'budget'",
        id="undeclared-field",
    ),
    pytest.param(
        _set(["stages", 0, "tasks", 0, "assignee"], "accountant"),
        "stages.NEW.tasks",
        "undeclared role 'accountant'",
        id="undeclared-task-role",
    ),
    pytest.param(
        _set(["stages", 0, "sla", "escalate_to"], "boss"),
        "stages.NEW.sla",
        "undeclared role 'boss'",
        id="sla-role",
    ),
    pytest.param(
        _set(["fields", 0, "type"], "string"),
        "stages.MEETING.follow_up",
        "must be a declared date or datetime field",
        id="follow-up-type",
    ),
    pytest.param(
        _set(["loss_reasons"], []),
        "stages.LOST.required_fields",
        "undeclared field 'loss_reason'",
        id="loss-reason-without-reasons",
    ),
    pytest.param(
        _set(["stages", 0, "temperature"], "lukewarm"),
        "stages.NEW.temperature",
        "'cold', 'warm' or 'hot'",
        id="temp",
    ),
    pytest.param(
        lambda d: d["stages"][0].pop("temperature"), "stages.NEW.temperature", "Field required", id="no-temp"
    ),
    pytest.param(
        _set(["key"], "Bad Key"), "key", "must look like 'niche.funnel'", id="key-shape", marks=BAD_KEY
    ),
    pytest.param(_set(["niche"], "other"), "niche", "must start with its niche", id="key-niche"),
    pytest.param(
        _set(["fields", 0, "type"], "enum"),
        "fields.meeting_at",
        "needs at least one option",
        id="enum-options",
    ),
    pytest.param(
        _set(["stages", 0, "tasks", 0, "due_in"], "soon"), "stages.NEW.tasks[0].due_in", "", id="duration"
    ),
    pytest.param(_set(["unknown"], 1), "unknown", "Extra inputs are not permitted", id="extra-key"),
    pytest.param(_set(["goal"], "growth"), "goal", "Input should be", id="goal"),
]


@pytest.mark.parametrize(("change", "field", "reason"), CASES)
def test_rule_rejects_with_file_template_field_and_reason(
    request: pytest.FixtureRequest, tmp_path: Path, change: Any, field: str, reason: str
) -> None:
    marker = request.node.get_closest_marker("template_name")
    name = marker.args[0] if marker else "test.sample"
    messages = problems_for(tmp_path, mutate(change))
    assert any(f"template {name}: {field}: " in m and reason in m for m in messages), messages


def test_too_many_stages_is_rejected(tmp_path: Path) -> None:
    data = valid_template()
    extra = [
        {
            "code": f"S{i}",
            "name": {"ru": f"Этап {i}", "en": f"Stage {i}"},
            "temperature": "warm",
            "color": "#fff000",
        }
        for i in range(MAX_STAGES)
    ]
    data["stages"][1:1] = extra
    messages = problems_for(tmp_path, data)
    assert any("stages:" in m and "amoCRM allows 100 statuses" in m for m in messages), messages


def test_duplicate_template_keys_across_files_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, valid_template(), "a.yaml")
    write(tmp_path, valid_template(), "b.yaml")
    with pytest.raises(TemplateError) as caught:
        load_templates([tmp_path])
    [problem] = caught.value.problems
    assert problem.file.endswith("b.yaml") and problem.field == "key"
    assert "duplicate template key" in problem.reason and "a.yaml" in problem.reason


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("key: [unclosed\n", encoding="utf-8")
    with pytest.raises(TemplateError) as caught:
        load_templates([path])
    assert str(caught.value).startswith(f"{path}: template ?: (file): not valid YAML")


def test_a_file_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="must hold one YAML mapping"):
        load_templates([path])
