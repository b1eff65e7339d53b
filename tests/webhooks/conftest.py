"""The receiver tests' served app (tests/webhooks/receiver_support.py) as a fixture; a test module
with a `service` fixture of its own keeps that one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.webhooks.receiver_support import Service, served_receivers


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[Service]:
    with served_receivers(database_url, tmp_path) as served:
        yield served
