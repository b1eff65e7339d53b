"""A throwaway PostgreSQL server for the test session, started from the machine's binaries.

initdb refuses to run as root, so as root the data folder is handed to the `postgres` user and
initdb/pg_ctl run through `runuser`. When the binaries are missing they are installed with apt.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.apt import PackageUnavailable, apt_install
from tests.support.server import free_port


class PostgresUnavailable(RuntimeError):
    pass


def _find_bin_dir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _install_with_apt() -> None:
    try:
        apt_install("postgresql", "the tests need a PostgreSQL server")
    except PackageUnavailable as exc:
        raise PostgresUnavailable(str(exc)) from exc


@dataclass
class PostgresServer:
    bin_dir: Path
    data_dir: Path
    port: int
    as_user: str | None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True)

    def psql(self, sql: str, database: str = "postgres") -> None:
        psql = self.bin_dir / "psql"
        self._run(
            str(psql if psql.exists() else "psql"),
            "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
            "-v", "ON_ERROR_STOP=1", "-q", "-c", sql,
        )  # fmt: skip

    @functools.cached_property
    def version(self) -> int:
        """The server's major version (initdb's own, which the server shares)."""
        out = self._run(str(self.bin_dir / "initdb"), "--version").stdout
        return int(re.search(r"(\d+)", out).group(1))  # type: ignore[union-attr]

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database: empty, or a copy of `template` (which must have no open connections)."""
        sql = f'CREATE DATABASE "{name}"'
        if template:
            # FILE_COPY copies the template's files instead of writing them all through the WAL (the
            # default since PostgreSQL 15): a quarter faster per test database, fsync being off.
            sql += f' TEMPLATE "{template}"' + (" STRATEGY FILE_COPY" if self.version >= 15 else "")
        self.psql(sql)
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        _install_with_apt()
        bin_dir = _find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable("initdb not found even after installing postgresql")
    as_user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="funnelsync-pg-"))
    data_dir = root / "data"
    data_dir.mkdir()
    if as_user:
        shutil.chown(root, as_user)
        shutil.chown(data_dir, as_user)
    server = PostgresServer(bin_dir, data_dir, free_port(), as_user)
    server._run(
        str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust",
        "--no-sync", "-E", "UTF8", "--locale=C",
    )  # fmt: skip
    # Each pytest-xdist worker starts its own server: its own folder (mkdtemp) and a free port. Two
    # workers can be handed the same free port before either listens; the loser tries another.
    for attempt in range(3):
        options = (
            f"-p {server.port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        try:
            server._run(
                str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-l", str(root / "log"),
                "-w", "start",
            )  # fmt: skip
            break
        except subprocess.CalledProcessError as exc:
            if attempt == 2:
                log = (root / "log").read_text(errors="replace")[-2000:]
                shutil.rmtree(root, ignore_errors=True)
                raise PostgresUnavailable(f"pg_ctl start failed: {exc.stderr}\n{log}") from exc
            server.port = free_port()
    try:
        yield server
    finally:
        try:
            server._run(str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop")
        finally:
            _remove_in_background(root)


def _remove_in_background(root: Path) -> None:
    """Delete the server's folder without waiting: by the end of a session it holds a database per
    test (gigabytes of small files), and removing them took each worker 10-20 seconds at the very
    end of the run, when nothing else was left to overlap with."""
    subprocess.Popen(
        ["rm", "-rf", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives the worker process that started it
    )
