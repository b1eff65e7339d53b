"""The sandbox's lost-webhook option: a set percentage of event deliveries never reaches the handler
and is never resent (the real queue server does not retry), spread evenly so a test knows which."""

from __future__ import annotations

from urllib.parse import parse_qs

from tests.connectors.bitrix24.conftest import Receiver, running_sandbox
from tests.support import web


def test_a_percentage_of_deliveries_is_lost_deterministically(receiver: Receiver) -> None:
    with running_sandbox(webhook_url=f"{receiver.url}/hook") as box:
        box.control("POST", "/_sandbox/config", {"webhook_drop_percent": 30})
        deals = [box.create_deal(TITLE=f"Deal {n}") for n in range(10)]
        received = receiver.wait_for(7)

        log = box.control("GET", "/_sandbox/webhooks")
        dropped = [int(parse_qs(d["body"])["data[FIELDS][ID]"][0]) for d in log if d["status"] == "dropped"]
        assert dropped == [deals[3], deals[6], deals[9]]  # the 4th, 7th and 10th of every 10
        assert len(log) == 10 and box.stats()["webhooks_failed"] == 3
        sent = sorted(int(parse_qs(body.decode())["data[FIELDS][ID]"][0]) for _, _, body in received)
        assert sent == sorted(set(deals) - set(dropped))

        # Switched off (and the pattern restarts whenever the option is set): everything arrives.
        box.control("POST", "/_sandbox/config", {"webhook_drop_percent": 0})
        box.create_deal(TITLE="Delivered")
        assert len(receiver.wait_for(8)) == 8


def test_a_bad_drop_percentage_is_refused_and_changes_nothing(receiver: Receiver) -> None:
    with running_sandbox(webhook_url=f"{receiver.url}/hook") as box:
        for bad in (101, -1, "30", 2.5, True):
            answer = web.post(
                f"{box.url}/_sandbox/config", json={"webhook_url": None, "webhook_drop_percent": bad}
            )
            assert answer.status_code == 400 and "webhook_drop_percent" in answer.json()["error"]
        assert box.config.webhook_url == f"{receiver.url}/hook" and box.config.webhook_drop_percent == 0
