"""`funnelsync templates list|show|validate|new` as a user runs them."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from funnel_templates.loader import library, use_template_dirs
from tests.support.cli import run_cli, run_cli_process


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
        "description",
        "stages",
        "fields",
        "loss_reasons",
    }
    assert data[0]["description"]["en"].startswith("11 stages")


def test_show_prints_stages_in_order() -> None:
    result = run_cli("templates", "show", "general.typical")
    assert result.returncode == 0, result.stderr
    names = [s.name.ru for s in library()["general.typical"].stages]
    table = result.stdout.index(" code ")  # after the description, which names the first and last stage
    positions = [result.stdout.find(n, table) for n in names]
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
    found = re.search(
        rf"{re.escape(str(broken))}:(\d+): template general.typical: stages.DEFERRED.required_fields: "
        "requires undeclared field 'nonexistent'",
        result.stderr.replace("\n", " "),
    )
    assert found, result.stderr
    # The line is where the stage's required_fields list starts (the item naming the field).
    lines = broken.read_text(encoding="utf-8").splitlines()
    assert "nonexistent" in "".join(lines[int(found.group(1)) - 1 : int(found.group(1)) + 1])


def test_validate_with_no_yaml_exits_2(tmp_path: Path) -> None:
    result = run_cli("templates", "validate", str(tmp_path))
    assert result.returncode == 2 and "no template files found" in result.stderr


def test_list_never_truncates_a_key_at_80_columns() -> None:
    result = run_cli_process("templates", "list", env={"COLUMNS": "80"})  # a real terminal's width
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    cells = {line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")}
    assert set(library()) <= cells  # each key whole, in its own cell


def test_new_copies_a_template_under_a_new_key(tmp_path: Path) -> None:
    made = run_cli("templates", "new", "--from", "auto_service.repair", "--key", "acme.repair", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    path = tmp_path / "acme.repair.yaml"
    text = path.read_text(encoding="utf-8")
    assert "key: acme.repair\nniche: acme\n" in text and "# source: " in text  # comments kept
    assert run_cli("templates", "validate", str(path)).returncode == 0

    again = run_cli("templates", "new", "--from", "auto_service.repair", "--key", "acme.repair", cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr and "--force" in again.stderr
    path.write_text("edited", encoding="utf-8")
    forced = run_cli(
        "templates", "new", "--from", "auto_service.repair", "--key", "acme.repair", "--force", cwd=tmp_path
    )
    assert forced.returncode == 0 and path.read_text(encoding="utf-8") == text

    default_key = run_cli("templates", "new", "--from", "general.typical", cwd=tmp_path)
    assert default_key.returncode == 0 and (tmp_path / "general.typical_copy.yaml").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "nope.nope"], "no template with key 'nope.nope'"),
        (["--from", "general.typical", "--key", "Bad Key"], "must look like 'niche.funnel'"),
    ],
)
def test_new_refuses_bad_input_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("templates", "new", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def shipped_library_after() -> Iterator[None]:
    """In-process commands set the library's folders from their environment: back to none after."""
    yield
    use_template_dirs(())


@pytest.mark.usefixtures("shipped_library_after")
def test_a_templates_dir_adds_and_replaces_library_templates(tmp_path: Path) -> None:
    shipped = len(library())
    own = tmp_path / "own"
    own.mkdir()
    assert (
        run_cli(
            "templates", "new", "--from", "general.typical", "--key", "acme.sales", str(own / "a.yaml")
        ).returncode
        == 0
    )
    replaced = own / "typical.yaml"
    assert (
        run_cli(
            "templates", "new", "--from", "general.typical", "--key", "general.typical", str(replaced)
        ).returncode
        == 0
    )
    replaced.write_text(
        replaced.read_text(encoding="utf-8").replace("ru: Лиды,", "ru: Наши лиды,", 1), encoding="utf-8"
    )
    env = {"FUNNELSYNC_TEMPLATES_DIR": f"{tmp_path / 'missing'}{os.pathsep}{own}"}

    missing = run_cli("templates", "list", env=env)
    assert missing.returncode == 2 and "names a folder that does not exist" in missing.stderr
    env = {"FUNNELSYNC_TEMPLATES_DIR": str(own)}
    listed = run_cli("templates", "list", "--niche", "general", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {
        line.split("│")[1].strip(): line
        for line in listed.stdout.splitlines()
        if line.startswith("│ general")
    }
    assert str(replaced) in rows["general.typical"]  # marked as coming from the folder
    shown = run_cli("templates", "show", "general.typical", "--json", env=env)
    assert json.loads(shown.stdout)["stages"][0]["name"]["ru"] == "Наши лиды"
    assert "acme.sales" in run_cli("templates", "list", env=env).stdout
    valid = run_cli("templates", "validate", env=env)
    assert valid.returncode == 0 and f"{shipped + 1} template(s) valid" in valid.stdout


def test_validate_reports_every_problem_of_every_file_at_once(tmp_path: Path) -> None:
    data = library()["general.typical"].model_dump(mode="json")
    data["stages"][0]["color"] = "#000000"  # a field error...
    data["stages"][1]["sla"]["escalate_to"] = "nobody"  # ...and two rule errors in the same file
    data["stages"][3]["required_fields"] = [{"field": "nonexistent", "derived": False}]
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    (tmp_path / "two.yaml").write_text("key: [unclosed\n", encoding="utf-8")
    result = run_cli("templates", "validate", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert [line.split(": ")[2] for line in lines if "one.yaml" in line] == [
        "stages.LEADS.color",
        "stages.NEW_REQUEST.sla",
        "stages.DEFERRED.required_fields",
    ]
    assert any("two.yaml" in line and "not valid YAML" in line for line in lines)
