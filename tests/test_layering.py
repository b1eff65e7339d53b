"""Import layering (issue #12): the scheduler sits above every domain (it imports their jobs), so
nothing it imports may import it back; connections sit below deals and webhooks; SQL lives in the
domains' services and repositories, not in endpoints, CLI commands or the scheduler; connectors (the
CRM side) never import the service.

Read from the source with `ast`, so an import inside a function counts too."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports: `import a.b` gives a.b; `from a.b import c` gives a.b and a.b.c
    (c may be a module); relative imports are resolved against the file's package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def offending(paths: Iterable[Path], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    """`file: module` for each import of a forbidden package (or a module inside it)."""
    problems = []
    for path in sorted(paths):
        for module in sorted(imported_modules(path)):
            hit = any(module == f or module.startswith(f + ".") for f in forbidden)
            if hit and not any(module == a or module.startswith(a + ".") for a in allowed):
                problems.append(f"{path.relative_to(ROOT)}: {module}")
    return problems


def endpoint_modules() -> list[Path]:
    return [*APP.glob("*/endpoints.py"), APP / "dashboard" / "pages.py"]


def test_the_files_checked_exist() -> None:
    # A glob that matches nothing (after a move) would make every test below pass vacuously.
    assert len(list(APP.glob("*/endpoints.py"))) >= 7
    assert (APP / "webhooks" / "receivers.py").is_file()
    assert (APP / "dashboard" / "pages.py").is_file()
    assert list((APP / "connections").glob("*.py"))


def test_web_modules_do_not_import_the_scheduler() -> None:
    """Receivers, endpoints and pages wake jobs through the Waker on app.state (app/waker.py)."""
    web = {*APP.glob("webhooks/*.py"), *APP.glob("dashboard/*.py"), *endpoint_modules()}
    assert offending(web, ("app.scheduler", "apscheduler")) == []


def test_the_waker_does_not_import_the_scheduler() -> None:
    assert offending([APP / "waker.py"], ("app.scheduler", "apscheduler")) == []


def test_connections_do_not_import_funnels_deals_or_webhooks() -> None:
    """What reads them for a connection (its sync status, its assignees' roles, whether it is
    provisioned) is composed in app/status/."""
    assert offending(APP.glob("connections/*.py"), ("app.funnels", "app.deals", "app.webhooks")) == []


def test_connectors_do_not_import_the_service() -> None:
    """A CRM's folder (descriptor, connector, input model, sandbox) depends on nothing in app/."""
    assert offending((ROOT / "connectors").rglob("*.py"), ("app",)) == []


SQL_FREE = {
    "endpoints": endpoint_modules(),
    "cli": [*APP.glob("*/cli.py"), APP / "cli.py"],
    "scheduler": [APP / "scheduler.py"],
}


@pytest.mark.parametrize("group", sorted(SQL_FREE))
def test_no_sql_outside_services(group: str) -> None:
    """Queries are named functions of a domain's service or repository; these modules may use
    sessions (their types come from sqlalchemy.ext.asyncio) but build no statements."""
    assert offending(SQL_FREE[group], ("sqlalchemy",), allowed=("sqlalchemy.ext.asyncio",)) == []
