"""The one ingest path: every way FunnelSync learns about deals (inbox processor, scheduled reconcile,
`funnelsync sync`) mirrors them and runs the stage rules and the template automations through `ingest`, in the caller's transaction.

Why one function: a path that mirrored without the rules (the CLI sync did) records the stage entry
but never fires its rules, and every later look at the deal sees it unchanged, so the stage-entry
task is lost for good. With one path the transition, the outbox rows it causes and whatever the
caller commits with them (processed events, the reconcile cursor) commit together; a crash re-runs
all of it and the outbox's idempotency keys make the re-run add nothing. Whichever path sees a move
first records its one transition; the other then finds the deal unchanged, so a move fires its rules
once however many paths report it.

This lives in deals/ but imports rules/ (which imports deals.mirror), so nothing under rules/ may
import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.automations.runner import AutomationsOutcome, apply_automations
from app.connections.models import Connection
from app.deals.mirror import MirrorResult, load_stage_index, mirror_snapshots, tombstone
from app.rules.service import RulesOutcome, apply_rules
from connectors.base import DealSnapshot


@dataclass
class IngestResult:
    mirrored: MirrorResult
    rules: RulesOutcome  # rules.enqueued: new outbox commands, delivered by the outbox worker
    automations: AutomationsOutcome  # what the stage entries' template automations queued


async def ingest(
    session: AsyncSession,
    connection: Connection,
    snapshots: Sequence[DealSnapshot],
    *,
    deletions: Sequence[tuple[str, datetime]] = (),
    source: str,
) -> IngestResult:
    """Mirror `snapshots`, tombstone `deletions` (CRM deal id, when) and run the stage rules on
    what entered a stage. `source` ("webhook", "reconcile") is stamped on the transitions.
    Never commits: the caller's transaction holds everything."""
    index = await load_stage_index(session, connection.id)
    mirrored = await mirror_snapshots(session, connection.id, snapshots, index, source)
    # Tombstones before the rules: a deal moved and then deleted in the same batch demands nothing.
    for deal_id, at in deletions:
        mirrored.deleted += await tombstone(session, connection.id, [deal_id], at)
    rules = await apply_rules(session, connection, mirrored)
    automations = await apply_automations(session, connection, mirrored)
    return IngestResult(mirrored, rules, automations)
