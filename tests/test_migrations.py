"""Migrations upgrade and downgrade on SQLite and PostgreSQL, and match the models exactly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import JSON, Boolean, ForeignKeyConstraint, column, insert, inspect, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnClause

from app.db import Base, UTCDateTime, create_engine
from app.migrate import current_head, downgrade, upgrade

TABLES = {
    "connections",
    "funnels",
    "stages",
    "deals",
    "stage_transitions",
    "inbox_events",
    "outbox_commands",
}


def _inspect(url: str) -> tuple[set[str], str | None, list[object]]:
    async def run() -> tuple[set[str], str | None, list[object]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:

                def read(sync: Connection) -> tuple[set[str], str | None, list[object]]:
                    context = MigrationContext.configure(sync, opts={"compare_type": True})
                    diff = compare_metadata(context, Base.metadata) if context.get_current_revision() else []
                    diff = _without_inline_fk_artifacts(sync, diff)
                    return set(inspect(sync).get_table_names()), context.get_current_revision(), diff

                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _fk_signature(fk: ForeignKeyConstraint) -> tuple[str, tuple[str, ...], str, tuple[str, ...]]:
    assert fk.table is not None
    return (
        fk.table.name,
        tuple(fk.column_keys),
        fk.referred_table.name,
        tuple(e.column.name for e in fk.elements),
    )


def _without_inline_fk_artifacts(sync: Connection, diff: list[Any]) -> list[Any]:
    """SQLite reflects a foreign key declared on its column (ALTER TABLE ... ADD COLUMN ... REFERENCES,
    the only way to add one without a table rebuild: see 0005) with neither its name nor its ON
    DELETE, so autogenerate reports it removed and added again. Such a pair is dropped here once
    PRAGMA foreign_key_list, which does report ON DELETE, shows the database has what the model says."""
    if sync.dialect.name != "sqlite":
        return diff
    removed = {_fk_signature(fk): fk for kind, fk, *_ in diff if kind == "remove_fk" and fk.name is None}
    artifacts: list[Any] = []
    for entry in diff:
        kind, fk, *_ = entry
        if kind != "add_fk" or _fk_signature(fk) not in removed:
            continue
        table, columns, referred, _ = _fk_signature(fk)
        pragma = sync.exec_driver_sql(f"PRAGMA foreign_key_list({table})").all()
        on_delete = {(row[3],): (row[2], row[6]) for row in pragma}
        assert on_delete.get(columns) == (referred, (fk.ondelete or "NO ACTION").upper()), entry
        artifacts += [entry, ("remove_fk", removed[_fk_signature(fk)])]
    return [entry for entry in diff if entry not in artifacts]


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    import app.models  # noqa: F401  (all tables on Base.metadata for the comparison)

    upgrade(empty_database_url)
    tables, revision, diff = _inspect(empty_database_url)
    assert tables >= TABLES
    assert revision == current_head()
    assert diff == [], f"models and migrations disagree: {diff}"

    downgrade(empty_database_url, "base")
    tables, revision, _ = _inspect(empty_database_url)
    assert not (TABLES & tables)
    assert revision is None

    upgrade(empty_database_url)
    tables, revision, _ = _inspect(empty_database_url)
    assert tables >= TABLES and revision == current_head()


def test_0002_backfills_from_stage_entered_at(empty_database_url: str) -> None:
    """Rows written before 0002 get the `at` of the same deal's previous transition (by at, then id);
    a deal's first transition stays NULL."""
    upgrade(empty_database_url, "0001")
    # (id, deal, minutes): deal 1 in order; deal 2 moved twice within one stamp (the id decides);
    # deal 3 stored out of time order (the time decides, not the id); deal 4 only created.
    transitions = [
        (1, 1, 0), (2, 1, 10), (3, 1, 25),
        (4, 2, 0), (5, 2, 7), (6, 2, 7),
        (8, 3, 30), (9, 3, 5), (7, 3, 20),
        (10, 4, 3),
    ]  # fmt: skip
    previous = {1: None, 2: 0, 3: 10, 4: None, 5: 0, 6: 7, 9: None, 7: 5, 8: 20, 10: None}

    async def seed() -> None:
        engine = create_engine(empty_database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(ONE_CONNECTION)
                for deal in (1, 2, 3, 4):
                    await connection.execute(
                        insert(DEALS).values(
                            id=deal, connection_id=1, crm_deal_id=str(deal), crm_pipeline_id="5",
                            crm_stage_id="C5:NEW", managed=True, title="", fields={},
                            crm_updated_at=T0, created_at=T0, updated_at=T0,
                        )
                    )  # fmt: skip
                for id_, deal, minutes in transitions:  # one by one, in the order listed
                    await connection.execute(
                        insert(TRANSITIONS).values(
                            id=id_, deal_id=deal, to_crm_stage_id="C5:NEW", source="webhook",
                            at=T0 + timedelta(minutes=minutes), created_at=T0,
                        )
                    )  # fmt: skip
        finally:
            await engine.dispose()

    async def read(*columns: ColumnClause[Any]) -> list[tuple[Any, ...]]:
        engine = create_engine(empty_database_url)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(select(*columns).order_by(TRANSITIONS.c.id))
                return [tuple(row) for row in rows]
        finally:
            await engine.dispose()

    asyncio.run(seed())
    upgrade(empty_database_url)
    assert dict(asyncio.run(read(TRANSITIONS.c.id, TRANSITIONS.c.from_stage_entered_at))) == {
        id_: None if minutes is None else T0 + timedelta(minutes=minutes) for id_, minutes in previous.items()
    }
    # And back down to 0001 (SQLite rebuilds the table to drop the column): the rows stay.
    downgrade(empty_database_url, "0001")
    assert _inspect(empty_database_url)[1] == "0001"
    assert asyncio.run(read(TRANSITIONS.c.id, TRANSITIONS.c.at)) == [
        (id_, T0 + timedelta(minutes=minutes)) for id_, _, minutes in sorted(transitions)
    ]


# Plain table clauses for the backfill test, which writes at 0001 (the models describe head).
T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
CONNECTIONS = table(
    "connections",
    *map(column, ("id", "name", "crm", "base_url", "credentials_encrypted", "status")),
    column("settings", JSON()),
    column("created_at", UTCDateTime()),
    column("updated_at", UTCDateTime()),
)
DEALS = table(
    "deals",
    *map(column, ("id", "connection_id", "crm_deal_id", "crm_pipeline_id", "crm_stage_id", "title")),
    column("managed", Boolean()),
    column("fields", JSON()),
    column("crm_updated_at", UTCDateTime()),
    column("created_at", UTCDateTime()),
    column("updated_at", UTCDateTime()),
)
TRANSITIONS = table(
    "stage_transitions",
    *map(column, ("id", "deal_id", "to_crm_stage_id", "source")),
    column("at", UTCDateTime()),
    column("created_at", UTCDateTime()),
    column("from_stage_entered_at", UTCDateTime()),
)
# The connection every seeded row belongs to.
ONE_CONNECTION = insert(CONNECTIONS).values(
    id=1, name="c", crm="bitrix24", base_url="http://x/", credentials_encrypted="x",
    settings={}, status="active", created_at=T0, updated_at=T0,
)  # fmt: skip


# --- 0005: a command's rule, stage entry and echo as columns --------------------------------------

COMMANDS = table(
    "outbox_commands",
    *map(column, ("id", "connection_id", "deal_id", "kind", "idempotency_key", "status", "attempts")),
    column("payload", JSON()),
    column("next_attempt_at", UTCDateTime()),
    column("created_at", UTCDateTime()),
)
ATTEMPTS = table(
    "outbox_attempts", *map(column, ("id", "command_id", "outcome")), column("at", UTCDateTime())
)
MOVE = {"crm_deal_id": "1", "pipeline_id": "5", "stage_id": "C5:NEW"}
# Plain commands first, more than the migration's batch of 1000, so the rules' rows below are read
# in a later batch than the first.
PLAIN_COMMANDS = 1200
# id -> (kind, key, payload at 0004, (rule, stage_entry_id, echo_transition_id) after 0005). Transitions
# 1 and 2 exist; 99 does not (a foreign key cannot point at it: left NULL).
OLD_COMMANDS: dict[int, tuple[str, str, dict[str, Any], tuple[str | None, int | None, int | None]]] = {
    2001: ("move", "rules:1:LOST#2:revert:move", {**MOVE, "origin": "revert", "echo_transition_id": 1},
           ("revert_move", 2, 1)),
    2002: ("comment", "rules:1:LOST#2:revert:comment", {"text": "x"}, ("revert_comment", 2, None)),
    2003: ("comment", "rules:1:NEW#1:missing:comment", {"text": "x"}, ("missing_fields_comment", 1, None)),
    2004: ("task", "rules:1:NEW#1:missing:task", {"title": "x"}, ("missing_fields_task", 1, None)),
    2005: ("task", "rules:1:NEW#1:task:0", {"title": "x"}, ("stage_task", 1, None)),
    2006: ("task", "rules:1:WAIT#2:fu:0:20261126T140000Z", {"title": "x"}, ("follow_up_task", 2, None)),
    2007: ("task_due", "rules:1:WAIT#2:fu-move:2006:20261127T140000Z", {"task_command_id": 2006},
           ("follow_up_deadline_move", 2, None)),
    2008: ("task", "rules:1:NEW#1:sla", {"title": "x"}, ("sla_escalation", 1, None)),
    2009: ("task", "rules:1:NEW#99:task:1", {"title": "x"}, ("stage_task", None, None)),
    2010: ("move", "api:move:1:NEW:req-1", {**MOVE, "origin": "api", "echo_transition_id": 99},
           ("api_move", None, None)),
    2011: ("fields", "sync:fields:1", {"fields": {}, "origin": "api"}, (None, None, None)),  # not a move
}  # fmt: skip


def test_0005_fills_the_columns_from_keys_and_payloads(empty_database_url: str) -> None:
    """Commands written before 0005 get their rule and stage entry from the key, their echo and
    origin from the payload, which loses those two keys (it is what the CRM is sent); other
    commands, and the delivery history, stay as they were."""
    upgrade(empty_database_url, "0004")
    plain = [(i, "comment", f"other:{i}", {"text": "x"}) for i in range(1, PLAIN_COMMANDS + 1)]
    old = [(i, kind, key, payload) for i, (kind, key, payload, _) in OLD_COMMANDS.items()]
    asyncio.run(_seed_0004(empty_database_url, plain + old))

    upgrade(empty_database_url, "0005")
    rows = asyncio.run(_read_0005(empty_database_url))
    assert len(rows) == PLAIN_COMMANDS + len(OLD_COMMANDS)
    assert {i: row[:3] for i, row in rows.items() if i in OLD_COMMANDS} == {
        i: columns for i, (*_, columns) in OLD_COMMANDS.items()
    }
    assert all(row[:3] == (None, None, None) for i, row in rows.items() if i not in OLD_COMMANDS)
    assert rows[2001][3] == MOVE and rows[2010][3] == MOVE
    assert rows[2011][3] == {"fields": {}, "origin": "api"}  # only moves had those keys
    assert rows[2007][3] == {"task_command_id": 2006}
    assert asyncio.run(_attempt_commands(empty_database_url)) == [1, 2001]  # no table rebuild cascaded

    downgrade(empty_database_url, "0004")  # plain DROP COLUMN: rows and history stay
    assert _inspect(empty_database_url)[1] == "0004"
    assert asyncio.run(_attempt_commands(empty_database_url)) == [1, 2001]
    # 0004's code reads a move's origin and echo from its payload: they are back (the echo only
    # where 0005 could keep it: transition 99 never existed).
    payloads = asyncio.run(_payloads_0004(empty_database_url))
    assert payloads[2001] == OLD_COMMANDS[2001][2]
    assert payloads[2010] == {**MOVE, "origin": "api"}
    assert payloads[2011] == OLD_COMMANDS[2011][2] and payloads[2002] == OLD_COMMANDS[2002][2]


async def _seed_0004(url: str, commands: list[tuple[int, str, str, dict[str, Any]]]) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(ONE_CONNECTION)
            await connection.execute(
                insert(DEALS).values(
                    id=1, connection_id=1, crm_deal_id="1", crm_pipeline_id="5", crm_stage_id="C5:NEW",
                    managed=True, title="", fields={}, crm_updated_at=T0, created_at=T0, updated_at=T0,
                )
            )  # fmt: skip
            await connection.execute(
                insert(TRANSITIONS),
                [dict(id=i, deal_id=1, to_crm_stage_id="C5:NEW", source="webhook", at=T0, created_at=T0)
                 for i in (1, 2)],
            )  # fmt: skip
            await connection.execute(
                insert(COMMANDS),
                [dict(id=i, connection_id=1, deal_id=1, kind=kind, idempotency_key=key, payload=payload,
                      status="done", attempts=1, next_attempt_at=T0, created_at=T0)
                 for i, kind, key, payload in commands],
            )  # fmt: skip
            await connection.execute(
                insert(ATTEMPTS),
                [dict(id=i, command_id=c, outcome="done", at=T0) for i, c in ((1, 1), (2, 2001))],
            )
    finally:
        await engine.dispose()


async def _read_0005(url: str) -> dict[int, tuple[Any, ...]]:
    """id -> (rule, stage_entry_id, echo_transition_id, payload)."""
    new = table(
        "outbox_commands",
        *map(column, ("id", "rule", "stage_entry_id", "echo_transition_id")),
        column("payload", JSON()),
    )
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(new.c.id, new.c.rule, new.c.stage_entry_id, new.c.echo_transition_id, new.c.payload)
            )
            return {row[0]: tuple(row[1:]) for row in rows}
    finally:
        await engine.dispose()


async def _attempt_commands(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return list(await connection.scalars(select(ATTEMPTS.c.command_id).order_by(ATTEMPTS.c.id)))
    finally:
        await engine.dispose()


async def _payloads_0004(url: str) -> dict[int, Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return dict(
                tuple(row) for row in await connection.execute(select(COMMANDS.c.id, COMMANDS.c.payload))
            )
    finally:
        await engine.dispose()


# --- 0010: a deal's loss reason as a column -------------------------------------------------------

FUNNELS = table(
    "funnels", *map(column, ("id", "connection_id", "template_key", "name", "crm_pipeline_id")),
    column("created_pipeline", Boolean()), column("created_at", UTCDateTime()),
)  # fmt: skip
MAPPINGS = table("funnel_mappings", *map(column, ("id", "funnel_id", "kind", "code", "crm_id")))
DEALS_0009 = table(
    "deals",
    *map(
        column,
        ("id", "connection_id", "crm_deal_id", "crm_pipeline_id", "crm_stage_id", "title", "funnel_id"),
    ),
    column("managed", Boolean()),
    column("fields", JSON()),
    column("crm_updated_at", UTCDateTime()),
    column("created_at", UTCDateTime()),
    column("updated_at", UTCDateTime()),
)
# deal id -> (funnel, fields at 0009, loss_reason after 0010). Funnel 1 mapped field 777 to carry the
# reason; funnel 2 mapped none, so its deal's 777 is just a field.
LOSS_REASON_DEALS: dict[int, tuple[int | None, dict[str, Any], str | None]] = {
    1: (1, {"loss_reason_id": 5, "loss_reason": "price", "777": "x"}, "5"),  # amoCRM's native id first
    2: (1, {"loss_reason": "price"}, "price"),
    3: (1, {"loss_reason": "", "777": ["41", "42"]}, "41"),  # empty skipped; an enumeration's first value
    4: (2, {"777": "41"}, None),
    5: (None, {"loss_reason": "late"}, "late"),  # outside a funnel: its own code still counts
    6: (1, {}, None),
}


async def _two_funnels(connection: Any) -> None:
    """Connection 1 with funnels 1 and 2 (no mappings)."""
    await connection.execute(ONE_CONNECTION)
    for funnel in (1, 2):
        await connection.execute(
            insert(FUNNELS).values(
                id=funnel, connection_id=1, template_key=f"k{funnel}", name="f", crm_pipeline_id=str(funnel),
                created_pipeline=False, created_at=T0,
            )
        )  # fmt: skip


async def _lost_deal(connection: Any, deal: int, funnel: int | None, fields: dict[str, Any]) -> None:
    await connection.execute(
        insert(DEALS_0009).values(
            id=deal, connection_id=1, crm_deal_id=str(deal), crm_pipeline_id="1", crm_stage_id="LOSE",
            title="", funnel_id=funnel, managed=True, fields=fields, crm_updated_at=T0, created_at=T0,
            updated_at=T0,
        )
    )  # fmt: skip


async def _loss_reasons(url: str) -> dict[int, str | None]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(column("id"), column("loss_reason")).select_from(table("deals"))
            )
            return {int(deal): reason for deal, reason in rows}
    finally:
        await engine.dispose()


def test_0010_derives_the_loss_reason_from_the_fields(empty_database_url: str) -> None:
    upgrade(empty_database_url, "0009")

    async def seed() -> None:
        engine = create_engine(empty_database_url)
        try:
            async with engine.begin() as connection:
                await _two_funnels(connection)
                await connection.execute(
                    insert(MAPPINGS).values(id=1, funnel_id=1, kind="field", code="loss_reason", crm_id="777")
                )
                for deal, (funnel, fields, _) in LOSS_REASON_DEALS.items():
                    await _lost_deal(connection, deal, funnel, fields)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    upgrade(empty_database_url, "0010")
    assert asyncio.run(_loss_reasons(empty_database_url)) == {
        deal: reason for deal, (_, _, reason) in LOSS_REASON_DEALS.items()
    }
    downgrade(empty_database_url, "0009")
    assert _inspect(empty_database_url)[1] == "0009"
    upgrade(empty_database_url)
    assert asyncio.run(_loss_reasons(empty_database_url)) == {
        deal: reason for deal, (_, _, reason) in LOSS_REASON_DEALS.items()
    }


def test_0011_finds_the_loss_reason_under_the_fields_name(empty_database_url: str) -> None:
    """Bitrix24 deals key user fields by name (UF_CRM_*): 0011 reads the reason field there too, for
    deals that have no reason yet."""
    upgrade(empty_database_url, "0010")
    named = table("funnel_mappings", *map(column, ("id", "funnel_id", "kind", "code", "crm_id", "crm_name")))
    deals = {  # deal id -> (funnel, fields, reason set before 0011, reason after)
        1: (1, {"UF_CRM_LOSS_REASON": "40"}, None, "40"),
        2: (1, {"UF_CRM_LOSS_REASON": ["41"]}, None, "41"),
        3: (1, {"UF_CRM_LOSS_REASON": "40"}, "5", "5"),  # a reason found before stays
        4: (1, {"UF_CRM_LOSS_REASON": ""}, None, None),
        5: (2, {"UF_CRM_LOSS_REASON": "40"}, None, None),  # funnel 2 maps no reason field
    }

    async def seed() -> None:
        engine = create_engine(empty_database_url)
        try:
            async with engine.begin() as connection:
                await _two_funnels(connection)
                await connection.execute(
                    insert(named).values(
                        id=1,
                        funnel_id=1,
                        kind="field",
                        code="loss_reason",
                        crm_id="6990",
                        crm_name="UF_CRM_LOSS_REASON",
                    )
                )
                for deal, (funnel, fields, before, _) in deals.items():
                    await _lost_deal(connection, deal, funnel, fields)
                    await connection.execute(
                        table("deals", column("id"), column("loss_reason"))
                        .update()
                        .where(column("id") == deal)
                        .values(loss_reason=before)
                    )
        finally:
            await engine.dispose()

    asyncio.run(seed())
    upgrade(empty_database_url, "0011")
    assert asyncio.run(_loss_reasons(empty_database_url)) == {
        deal: after for deal, (_, _, _, after) in deals.items()
    }
    downgrade(empty_database_url, "0010")
    assert _inspect(empty_database_url)[1] == "0010"
