"""The CRM sandboxes are development and demo code (issue #12): `serve` and `worker` never load them,
and an install without them (the runtime package, the Docker image) still runs every service module
and says what is missing when asked for the demo or a sandbox."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_type_hints

import pytest

from app.demo_cli import demo_command
from app.sandbox_cli import SANDBOX_MODULES

ROOT = Path(__file__).resolve().parent.parent
# What a runtime install holds: the packages without the sandboxes (pyproject's packages.find exclude
# and .dockerignore leave out the same).
RUNTIME_PACKAGES = ("app", "connectors", "funnel_templates", "migrations")
NOT_IN_RUNTIME = shutil.ignore_patterns("sandbox", "sandbox_support", "__pycache__")
# The demo runner drives the sandboxes; only `funnelsync demo` imports it, after checking for them.
NEEDS_SANDBOXES = {"app.demo", "app.demo_messages", "app.__main__"}
# The test environment has FunnelSync installed editable, and its import hook finds direct children of
# `app` and `connectors` in the source checkout (connectors.sandbox_support among them) when the tree on
# sys.path lacks them. A runtime install has no such hook: take it out.
WITHOUT_EDITABLE_HOOK = (
    "import sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
)


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter started in `cwd` (first on sys.path), without the editable hook."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EDITABLE_HOOK + code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})},
    )


def loaded_modules(code: str, cwd: Path) -> set[str]:
    """The modules in sys.modules after running `code`."""
    result = run_python(f"{code}\nprint('\\n'.join(sys.modules))", cwd)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def sandbox_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == s or m.startswith(s + ".") for s in SANDBOX_MODULES))


def test_the_service_and_worker_entry_points_load_no_sandbox() -> None:
    loaded = loaded_modules("import app.cli, app.main, app.worker_cli", ROOT)
    assert {"app.cli", "app.main", "app.worker_cli", "app.demo_cli"} <= loaded
    assert sandbox_modules(loaded) == []


@pytest.fixture(scope="module")
def runtime_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("runtime")
    for package in RUNTIME_PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=NOT_IN_RUNTIME)
    assert not list(tree.glob("connectors/**/sandbox*"))
    return tree


def test_every_service_module_imports_without_the_sandboxes(runtime_tree: Path) -> None:
    modules = sorted(
        ".".join(path.relative_to(runtime_tree).with_suffix("").parts).removesuffix(".__init__")
        for package in ("app", "connectors")
        for path in (runtime_tree / package).rglob("*.py")
    )
    wanted = [m for m in modules if m not in NEEDS_SANDBOXES]
    code = "import importlib, importlib.util, app\n"
    code += f"assert app.__file__.startswith({str(runtime_tree)!r}), app.__file__\n"
    code += "assert importlib.util.find_spec('connectors.sandbox_support') is None\n"
    code += f"for name in {wanted!r}:\n    importlib.import_module(name)"
    loaded = loaded_modules(code, runtime_tree)
    assert "app.main" in wanted and set(wanted) <= loaded
    assert sandbox_modules(loaded) == []


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        (
            ["demo", "--duration", "5"],
            "connectors.bitrix24.sandbox, connectors.amocrm.sandbox, connectors.sandbox_support",
        ),
        (["sandbox", "bitrix24"], "connectors.bitrix24.sandbox"),
        (["sandbox", "amocrm"], "connectors.amocrm.sandbox"),
    ],
)
def test_demo_and_sandbox_commands_say_the_sandboxes_are_not_installed(
    runtime_tree: Path, tmp_path: Path, command: list[str], missing: str
) -> None:
    code = f"sys.argv = ['funnelsync', *{command!r}]\nfrom app.cli import main\nmain()"
    result = run_python(code, runtime_tree, env={"FUNNELSYNC_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert "the sandboxes are not installed" in result.stderr and missing in result.stderr
    assert "Traceback" not in result.stderr


def test_the_demo_help_names_the_demos_own_outage_defaults() -> None:
    from app.demo import OUTAGE_LENGTH, OUTAGE_START

    hints = get_type_hints(demo_command, include_extras=True)
    assert f"(default {OUTAGE_START:g})" in hints["outage_at"].__metadata__[0].help
    assert f"(default {OUTAGE_LENGTH:g})" in hints["outage_for"].__metadata__[0].help
