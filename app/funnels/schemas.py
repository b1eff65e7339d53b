"""Provisioning request body."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ProvisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(description="Template key, e.g. auto_service.repair")
    dry_run: bool = Field(default=True, description="Only compute the plan (the default, to be safe).")
