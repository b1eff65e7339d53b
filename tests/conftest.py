"""Session fixtures: the throwaway PostgreSQL server and a fresh database per test on each backend.

Under pytest-xdist (`make test`) every worker is its own process with its own session: its own
PostgreSQL server (own folder and port), its own migrated templates, its own tmp_path tree.
"""

from __future__ import annotations

import gc
import itertools
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.matrix import BACKENDS
from tests.support.postgres import PostgresServer, postgres_server

_db_counter = itertools.count()


def _expected_seconds(item: pytest.Item) -> float:
    slow = item.get_closest_marker("slow")
    return float(slow.kwargs.get("seconds", 20)) if slow else 0.0


def pytest_collection_finish(session: pytest.Session) -> None:
    # Collection imports the whole suite and the app: freezing those objects keeps them out of every
    # later garbage collection, whose full passes over them otherwise stall a process for long
    # enough to bunch the requests of the rate-limit tests (marker `timing`).
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The longest tests first (stable sort: the rest keep their order): spread over xdist workers
    # they then run alongside the many short ones instead of starting last and holding up the end.
    items.sort(key=_expected_seconds, reverse=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["bitrix24", "amocrm"])
def crm(request: pytest.FixtureRequest) -> str:
    """The CRM a test runs against: both, unless the test takes `each_crm_on_one_database`."""
    return str(request.param)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend a test runs on: every database test runs on both, unless it asks for
    `each_crm_on_one_database`."""
    return str(request.param)


def _sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _new_database_name() -> str:
    return f"t{os.getpid()}_{next(_db_counter)}"


# Migrating to head takes a few hundred milliseconds per database; most tests want a migrated one.
# So each backend is migrated once per session into a template that every test gets a fresh copy
# of. tests/test_migrations.py runs the migrations themselves on `empty_database_url`.
@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.migrate import upgrade

    path = tmp_path_factory.mktemp("migrated") / "funnelsync.db"
    upgrade(_sqlite_url(path))
    return path


@pytest.fixture(scope="session")
def migrated_postgres(postgres: PostgresServer) -> str:
    """The name of a database migrated to head, left without connections (a template needs that)."""
    from app.migrate import upgrade

    name = "migrated_template"
    upgrade(postgres.create_database(name))
    return name


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a fresh, empty database: a real SQLite file or a new PostgreSQL database."""
    if backend == "sqlite":
        return _sqlite_url(tmp_path / "funnelsync.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(_new_database_name())


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database migrated to head: a copy of the session's migrated template."""
    if backend == "sqlite":
        path = tmp_path / "funnelsync.db"
        template: Path = request.getfixturevalue("migrated_sqlite")
        # The backup API copies a consistent database whatever its journal mode (WAL included).
        with closing(sqlite3.connect(template)) as source, closing(sqlite3.connect(path)) as target:
            source.backup(target)
        return _sqlite_url(path)
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(_new_database_name(), template=request.getfixturevalue("migrated_postgres"))
