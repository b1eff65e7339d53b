"""Bitrix24 sandbox: an ASGI emulator of the REST API parts FunnelSync uses."""

from connectors.bitrix24.sandbox.app import FAULT_KINDS, create_sandbox_app, run_sandbox
from connectors.bitrix24.sandbox.config import SandboxConfig

__all__ = ["FAULT_KINDS", "SandboxConfig", "create_sandbox_app", "run_sandbox"]
