"""A faithful stand-in for one amoCRM account's API v4 (see app.py, guard.py, hooks.py)."""

from connectors.amocrm.sandbox.app import create_sandbox_app, run_sandbox
from connectors.amocrm.sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "create_sandbox_app", "run_sandbox"]
