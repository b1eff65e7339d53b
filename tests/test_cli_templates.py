"""`funnelsync templates list|show|validate` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from funnel_templates.loader import library
from tests.support.cli import run_cli


def test_list_shows_every_template() -> None:
    result = run_cli("templates", "list")
    assert result.returncode == 0, result.stderr
    for key in library():
        assert key in result.stdout
    assert f"{len(library())} funnel templates" in result.stdout


def test_list_json_is_whole_templates_with_schema_names() -> None:
    result = run_cli("templates", "list", "--json", "--niche", "general")
    data = json.loads(result.stdout)
    assert [t["key"] for t in data] == ["general.typical"]
    assert set(data[0]) >= {
        "key",
        "niche",
        "name",
        "goal",
        "source",
        "stages",
        "fields",
        "loss_reasons",
        "notes",
    }


def test_show_prints_stages_in_order() -> None:
    result = run_cli("templates", "show", "general.typical")
    assert result.returncode == 0, result.stderr
    names = [s.name.ru for s in library()["general.typical"].stages]
    positions = [result.stdout.find(n) for n in names]
    assert -1 not in positions and positions == sorted(positions)


def test_unknown_key_and_niche_exit_2_with_a_message() -> None:
    result = run_cli("templates", "show", "nope.nope")
    assert result.returncode == 2 and "no template with key 'nope.nope'" in result.stderr
    result = run_cli("templates", "list", "--niche", "nope")
    assert result.returncode == 2 and "unknown niche 'nope'" in result.stderr


def test_validate_the_library_passes() -> None:
    result = run_cli("templates", "validate")
    assert result.returncode == 0, result.stderr
    assert f"{len(library())} template(s) valid" in result.stdout


def test_validate_a_broken_file_names_the_problem_and_exits_2(tmp_path: Path) -> None:
    source = library()["general.typical"].model_dump(mode="json")
    source["stages"][3]["required_fields"] = [{"field": "nonexistent", "derived": False}]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(source, allow_unicode=True), encoding="utf-8")
    result = run_cli("templates", "validate", str(broken))
    assert result.returncode == 2
    assert (
        f"{broken}: template general.typical: stages.DEFERRED.required_fields: "
        "requires undeclared field 'nonexistent'"
    ) in result.stderr


def test_validate_with_no_yaml_exits_2(tmp_path: Path) -> None:
    result = run_cli("templates", "validate", str(tmp_path))
    assert result.returncode == 2 and "no template files found" in result.stderr
