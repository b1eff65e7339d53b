"""A deal the connector's user may not change: inside `batch` the portal refuses that command alone
with ACCESS_DENIED (DOCS crm-item-update.md, crm-timeline-comment-add.md). That is the item's
permanent error, not an account-level auth failure; the rest of the batch stands."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.base import AuthError, NewComment, NewTask, PermanentError, StageMove
from connectors.bitrix24.client import Bitrix24Connector
from tests.connectors.bitrix24.conftest import Sandbox


async def test_access_denied_on_one_deal_fails_only_that_item(
    sandbox: Sandbox, connector: Bitrix24Connector
) -> None:
    locked, free = sandbox.create_deal(TITLE="locked"), sandbox.create_deal(TITLE="free")
    sandbox.control("POST", "/_sandbox/permissions", {"deny_edit": [locked]})

    moves = await connector.move_deals(
        [
            StageMove("m-locked", str(locked), "0", "EXECUTING"),
            StageMove("m-free", str(free), "0", "EXECUTING"),
        ]
    )
    comments = await connector.add_comments(
        [NewComment("c-locked", str(locked), "hello"), NewComment("c-free", str(free), "hello")]
    )

    for denied in (moves[0], comments[0]):
        error = denied.error
        assert isinstance(error, PermanentError) and not isinstance(error, AuthError)
        assert (error.item_ref, error.crm_code, error.crm_text) == (
            denied.ref,
            "ACCESS_DENIED",
            "Access denied",
        )
        assert "access" in str(error).lower()
    assert moves[1].ok and comments[1].ok
    stages = {d["ID"]: d["STAGE_ID"] for d in sandbox.state()["deals"]}
    assert stages == {locked: "NEW", free: "EXECUTING"}
    assert [c["ENTITY_ID"] for c in sandbox.state()["comments"]] == [free]

    # A refusal about the webhook itself stays account-level even per command (DOCS batch.md shows
    # insufficient_scope in result_error): the outbox must pause, not dead-letter every command.
    sandbox.control("POST", "/_sandbox/config", {"scopes": ["crm"]})
    with pytest.raises(AuthError, match="'task' scope"):
        await connector.create_tasks([NewTask("t", str(free), "Call", datetime(2030, 1, 1, tzinfo=UTC))])
