"""The CRMs FunnelSync ships with: one registration line each."""

from __future__ import annotations

from connectors.amocrm.descriptor import AMOCRM
from connectors.bitrix24.descriptor import BITRIX24
from connectors.descriptor import register

register(BITRIX24)
register(AMOCRM)
