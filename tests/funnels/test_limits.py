"""CRM limits are checked before any write, each with a clear error."""

from __future__ import annotations

import pytest

from app.funnels.plan import CRMState, PlanContext, PlanLimitError, StoredMapping, plan_provisioning
from connectors.amocrm.client import AmoCRMConnector
from connectors.base import NewStage, Pipeline, Stage
from connectors.bitrix24.client import Bitrix24Connector
from funnel_templates.loader import library
from tests.funnels.conftest import Provisioner

TYPICAL = library()["general.typical"]


def context(capabilities: object) -> PlanContext:
    return PlanContext(
        crm="test",
        capabilities=capabilities,  # type: ignore[arg-type]
        webhook_url="http://x/hook",
        webhook_events=("e",),
        webhook_auto=False,
    )


@pytest.mark.parametrize("crm", ["amocrm"])
async def test_amocrm_pipeline_limit_fails_before_any_write(provisioner: Provisioner) -> None:
    connector = provisioner.sandbox.connector()
    try:
        existing = len(await connector.list_pipelines())
        for i in range(50 - existing):
            await connector.create_pipeline(f"Filler {i}", 1000 + i, [NewStage("S", "Этап", 10, "#fffeb2")])
    finally:
        await connector.aclose()
    provisioner.sandbox.reset_stats()
    with pytest.raises(PlanLimitError, match="already has 50 pipelines and allows at most 50"):
        await provisioner.run(TYPICAL)
    assert provisioner.sandbox.writes() == 0


def test_amocrm_status_limit_counts_stages_left_in_the_pipeline() -> None:
    hand_made = tuple(Stage(str(1000 + i), "1", f"Ручной {i}", 100 + i) for i in range(95))
    pipeline = Pipeline("1", TYPICAL.name.ru, 10, hand_made)
    state = CRMState([pipeline], [], [], [])
    with pytest.raises(PlanLimitError, match=r"would have 106 stages .* at most 100"):
        plan_provisioning(
            TYPICAL, state, StoredMapping(pipeline_id="1"), context(AmoCRMConnector.capabilities)
        )


def test_bitrix24_status_id_length_is_checked_with_the_real_category_id() -> None:
    capabilities = Bitrix24Connector(webhook_url="https://p.example/rest/1/abc/").capabilities
    pipeline = Pipeline("1234567", TYPICAL.name.ru, 10, ())
    state = CRMState([pipeline], [], None, None)
    with pytest.raises(
        PlanLimitError, match=r"stage id 'C1234567:CONTRACT_SIGNED' would be 24 characters; the CRM allows 22"
    ):
        plan_provisioning(TYPICAL, state, StoredMapping(pipeline_id="1234567"), context(capabilities))
