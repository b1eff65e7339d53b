"""Provisioning request body."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ProvisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(default=None, description="Template key, e.g. auto_service.repair")
    template_yaml: str | None = Field(
        default=None,
        description="Instead of a key: a template of your own, as YAML text (at most 256 KB); it is "
        "validated, and applying keeps it with the connection for later plans and rules.",
    )
    dry_run: bool = Field(default=True, description="Only compute the plan (the default, to be safe).")

    @model_validator(mode="after")
    def _one_template(self) -> ProvisionRequest:
        if (self.template is None) == (self.template_yaml is None):
            raise ValueError("give exactly one of 'template' (a library key) and 'template_yaml'")
        return self
