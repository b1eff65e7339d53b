"""Which databases and CRMs a test runs on."""

from __future__ import annotations

import os

import pytest

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
if os.environ.get("FUNNELSYNC_TEST_BACKENDS") == "sqlite":  # quick local loop; CI runs both
    BACKENDS = ["sqlite"]


def each_crm_on_one_database(*, crossed: bool = False) -> pytest.MarkDecorator:
    """Parametrize `crm` and `backend` together, for tests whose CRM-specific part (the connector,
    the sandbox) and database-specific part (SQL, locking) do not meet: two runs instead of the
    four of the full matrix, and still each CRM once and each database once.

    Bitrix24 on SQLite and amoCRM on PostgreSQL; `crossed` swaps the databases, so that a module whose
    tests alternate the two still runs every CRM x database pair. Tests of what a database does with
    concurrent workers (leases, kills, two processes) keep both databases."""
    pairs = (
        [("bitrix24", "postgresql"), ("amocrm", "sqlite")]
        if crossed
        else [("bitrix24", "sqlite"), ("amocrm", "postgresql")]
    )
    if BACKENDS == ["sqlite"]:
        pairs = [(crm, "sqlite") for crm, _ in pairs]
    params = [
        pytest.param(crm, db, id=f"{db}-{crm}", marks=[pytest.mark.postgres] if db == "postgresql" else [])
        for crm, db in pairs
    ]
    return pytest.mark.parametrize(("crm", "backend"), params, indirect=["backend"])


def on_sqlite_only() -> pytest.MarkDecorator:
    """For a test that takes a database but whose outcome no database decides (a refusal before
    any query, an argument check): one run on SQLite instead of one per database."""
    return pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
