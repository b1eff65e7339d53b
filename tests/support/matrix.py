"""Which databases and CRMs a test runs on."""

from __future__ import annotations

import os

import pytest

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
if os.environ.get("FUNNELSYNC_TEST_BACKENDS") == "sqlite":  # quick local loop; CI runs both
    BACKENDS = ["sqlite"]


def each_crm_on_one_database() -> pytest.MarkDecorator:
    """Parametrize `crm` and `backend` together, Bitrix24 on SQLite and amoCRM on PostgreSQL, for
    tests of what a CRM does (provisioning a funnel) rather than of what a database does: each CRM
    is covered once and each database still runs the test, in half the runs of the full matrix.
    The sync loop (webhooks, rules, outbox) keeps the full matrix."""
    pairs = [("bitrix24", "sqlite"), ("amocrm", "postgresql")]
    if BACKENDS == ["sqlite"]:
        pairs = [(crm, "sqlite") for crm, _ in pairs]
    params = [
        pytest.param(crm, db, id=f"{db}-{crm}", marks=[pytest.mark.postgres] if db == "postgresql" else [])
        for crm, db in pairs
    ]
    return pytest.mark.parametrize(("crm", "backend"), params, indirect=["backend"])
