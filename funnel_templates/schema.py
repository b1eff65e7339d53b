"""Pydantic schema of a funnel template (one YAML file per funnel).

The schema is the single source of truth for what a template may say. Validators here enforce the
constraints that the CRMs impose (Bitrix24 STATUS_ID rules, amoCRM's colour palette and status
limit) so that a template that validates can be provisioned into either CRM.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, field_validator, model_validator

from funnel_templates.automations import (
    AutomationSpec,
    QualificationSpec,
    check_automations,
    check_qualification,
)
from funnel_templates.basics import BUILTIN_ROLES as BUILTIN_ROLES
from funnel_templates.basics import Duration as Duration
from funnel_templates.basics import LocalizedText as LocalizedText
from funnel_templates.basics import StrictModel, TaskFields, collect, duplicates, raise_all
from funnel_templates.basics import TemplateRuleError as TemplateRuleError
from funnel_templates.basics import TemplateRuleErrors as TemplateRuleErrors
from funnel_templates.basics import format_duration as format_duration
from funnel_templates.basics import parse_duration as parse_duration

# amoCRM accepts only these 21 status colours (amocrm-api-php StatusModel::COLORS). Bitrix24 accepts
# any hex colour, so the amoCRM palette is the common denominator.
AMOCRM_COLORS: tuple[str, ...] = (
    "#fffeb2", "#fffd7f", "#fff000", "#ffeab2", "#ffdc7f", "#ffce5a", "#ffdbdb",
    "#ffc8c8", "#ff8f92", "#d6eaff", "#c1e0ff", "#98cbff", "#ebffb1", "#deff81",
    "#87f2c0", "#f9deff", "#f3beff", "#ccc8f9", "#eb93ff", "#f2f3f4", "#e6e8ea",
)  # fmt: skip

# Bitrix24 stores a pipeline's stage as STATUS_ID "C{category}:{code}", at most 22 characters.
# Reserving room for the widest prefix we expect ("C9999:") leaves 16 for the code.
BITRIX24_STATUS_ID_MAX = 22
BITRIX24_WIDEST_PREFIX = "C9999:"
STAGE_CODE_MAX = BITRIX24_STATUS_ID_MAX - len(BITRIX24_WIDEST_PREFIX)
STAGE_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")

# amoCRM counts every status of a pipeline, the system "unsorted" one included, against 100.
AMOCRM_MAX_STATUSES = 100
AMOCRM_SYSTEM_STATUSES_BESIDE_TEMPLATE = 1  # "Неразобранное" (unsorted); 142/143 map to our stages
MAX_STAGES = AMOCRM_MAX_STATUSES - AMOCRM_SYSTEM_STATUSES_BESIDE_TEMPLATE

TEMPLATE_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
FIELD_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,29}$")

# Deal properties every CRM has natively; templates may require them without declaring them.
BUILTIN_FIELDS: frozenset[str] = frozenset({"amount", "contact", "company", "responsible"})
# Pseudo-field: the CRM's loss reason (amoCRM loss_reason_id, Bitrix24 enumeration field).
LOSS_REASON_FIELD = "loss_reason"

Goal = Literal[
    "qualification",
    "pre_sales",
    "new_sales",
    "active_base",
    "win_back",
    "cold",
    "delivery",
    "feedback",
    "post_sales",
    "full_cycle",
]
Semantics = Literal["process", "success", "failure"]
Temperature = Literal["cold", "warm", "hot"]
FieldType = Literal["string", "text", "number", "money", "date", "datetime", "enum", "boolean", "url"]
MissingFieldAction = Literal["task", "comment", "revert"]


# Declared here rather than imported so ruff sees the pydantic base (lists as defaults are safe).
class _Strict(BaseModel):
    model_config = StrictModel.model_config


class RequiredField(_Strict):
    field: str
    derived: bool = False  # True when the seed only implies the requirement


def _required_field_shorthand(value: object) -> object:
    return {"field": value} if isinstance(value, str) else value


class TaskSpec(TaskFields):
    """A CRM task created when a deal enters the stage."""

    derived: bool = False


class SlaSpec(_Strict):
    """How long a deal may stay in the stage before one escalation task is created."""

    within: Duration
    escalate_to: str = "supervisor"
    derived: bool = False


class FollowUpSpec(_Strict):
    """A date/datetime field whose value becomes a task due at that moment, or `lead_time` before it
    (e.g. next-contact date; a reminder the day before a visit). Changing the field moves the task."""

    field: str
    title: LocalizedText
    assignee: str = "responsible"
    lead_time: Duration = timedelta(0)
    derived: bool = False


class StageSpec(_Strict):
    code: str
    name: LocalizedText
    description: LocalizedText | None = None
    semantics: Semantics = "process"
    temperature: Temperature
    color: str
    required_fields: list[Annotated[RequiredField, BeforeValidator(_required_field_shorthand)]] = []
    on_missing_fields: MissingFieldAction = "task"
    tasks: list[TaskSpec] = []
    sla: SlaSpec | None = None
    follow_up: FollowUpSpec | None = None
    derived: bool = False  # True when the stage itself is derived from the text, not listed

    @field_validator("code")
    @classmethod
    def _code_is_bitrix24_status_id(cls, code: str) -> str:
        if not STAGE_CODE_RE.match(code):
            raise ValueError(
                f"stage code {code!r} must be usable as a Bitrix24 STATUS_ID: "
                "uppercase Latin letters, digits and underscore, starting with a letter"
            )
        if len(code) > STAGE_CODE_MAX:
            raise ValueError(
                f"stage code {code!r} is {len(code)} characters; at most {STAGE_CODE_MAX} fit in a "
                f"{BITRIX24_STATUS_ID_MAX}-character Bitrix24 STATUS_ID with a "
                f"{BITRIX24_WIDEST_PREFIX!r} prefix"
            )
        return code

    @field_validator("color")
    @classmethod
    def _color_in_amocrm_palette(cls, color: str) -> str:
        if color.lower() not in AMOCRM_COLORS:
            raise ValueError(
                f"colour {color!r} is not in amoCRM's 21-colour palette: {', '.join(AMOCRM_COLORS)}"
            )
        return color.lower()


class FieldOption(_Strict):
    code: str
    name: LocalizedText


class FieldSpec(_Strict):
    """A custom deal field the funnel needs."""

    code: str
    name: LocalizedText
    type: FieldType
    options: list[FieldOption] = []
    derived: bool = False

    @field_validator("code")
    @classmethod
    def _code_shape(cls, code: str) -> str:
        if not FIELD_CODE_RE.match(code):
            raise ValueError(
                f"field code {code!r} must be lowercase Latin letters, digits and underscore, "
                "starting with a letter, at most 30 characters"
            )
        if code in BUILTIN_FIELDS or code == LOSS_REASON_FIELD:
            raise ValueError(f"field code {code!r} is built in and cannot be redeclared")
        return code

    @model_validator(mode="after")
    def _options_match_type(self) -> FieldSpec:
        if self.type == "enum" and not self.options:
            raise ValueError(f"enum field {self.code!r} needs at least one option")
        if self.type != "enum" and self.options:
            raise ValueError(f"field {self.code!r} of type {self.type!r} cannot have options")
        return self


class LossReason(_Strict):
    code: str
    name: LocalizedText
    derived: bool = False


class RoleSpec(_Strict):
    code: str
    name: LocalizedText


class FunnelTemplate(_Strict):
    key: str
    niche: str
    name: LocalizedText
    goal: Goal
    # What users read about the funnel (template list, `templates show`, the dashboard).
    description: LocalizedText | None = None
    # Where the funnel comes from, for your own reference; the library keeps its provenance (article,
    # line numbers) in YAML comments instead, as users never see those files.
    source: str | None = None
    stages: list[StageSpec]
    fields: list[FieldSpec] = []
    loss_reasons: list[LossReason] = []
    roles: list[RoleSpec] = []
    automation: list[LocalizedText] = []  # seed automations kept as prose (no structured form)
    automations: list[AutomationSpec] = []
    qualification: QualificationSpec | None = None  # the Telegram qualification bot's questions
    notes: list[str] = []  # the author's notes; shown to nobody (older files carry them)

    @field_validator("key")
    @classmethod
    def _key_shape(cls, key: str) -> str:
        if not TEMPLATE_KEY_RE.match(key):
            raise ValueError(f"template key {key!r} must look like 'niche.funnel' (lowercase, digits, _)")
        return key

    @model_validator(mode="after")
    def _consistent(self) -> FunnelTemplate:
        """Every cross-field rule, each reported: an author fixes them all after one run."""
        problems: list[TemplateRuleError] = []
        if self.key.split(".", 1)[0] != self.niche:
            problems.append(
                TemplateRuleError(
                    "niche", f"template key {self.key!r} must start with its niche {self.niche!r}"
                )
            )
        problems += self._stage_problems()
        problems += self._reference_problems()
        for stage in self.stages:
            problems += self._stage_reference_problems(stage)
        collect(problems, check_automations, self)
        collect(problems, check_qualification, self)
        raise_all(problems)
        return self

    def _stage_problems(self) -> list[TemplateRuleError]:
        problems = duplicates("stages", "stage code", [s.code for s in self.stages])
        if len(self.stages) > MAX_STAGES:
            problems.append(
                TemplateRuleError(
                    "stages",
                    f"{len(self.stages)} stages; amoCRM allows {AMOCRM_MAX_STATUSES} statuses per "
                    f"pipeline including its system 'unsorted' status, so at most {MAX_STAGES}",
                )
            )
        successes = [s for s in self.stages if s.semantics == "success"]
        failures = [s for s in self.stages if s.semantics == "failure"]
        if len(successes) != 1:
            problems.append(
                TemplateRuleError("stages", f"exactly one success stage is required, found {len(successes)}")
            )
        if not failures:
            problems.append(TemplateRuleError("stages", "at least one failure stage is required"))
        problems += self._order_problems()
        if successes and failures and self.stages.index(successes[0]) > self.stages.index(failures[0]):
            problems.append(
                TemplateRuleError(
                    f"stages.{successes[0].code}.semantics",
                    "the success stage must come before the failure stages",
                )
            )
        return problems

    def _order_problems(self) -> list[TemplateRuleError]:
        """Final stages come last (Bitrix24 SORT rule: process < success < failure)."""
        problems = []
        seen_final = False
        for stage in self.stages:
            if stage.semantics != "process":
                seen_final = True
            elif seen_final:
                problems.append(
                    TemplateRuleError(
                        f"stages.{stage.code}.semantics",
                        f"process stage {stage.code!r} comes after a success or failure stage; "
                        "final stages must come last (Bitrix24 SORT rule: process < success < failure)",
                    )
                )
        return problems

    def _reference_problems(self) -> list[TemplateRuleError]:
        return [
            *duplicates("fields", "field code", [f.code for f in self.fields]),
            *duplicates("loss_reasons", "loss reason code", [r.code for r in self.loss_reasons]),
            *duplicates("roles", "role code", [r.code for r in self.roles]),
        ]

    def _stage_reference_problems(self, stage: StageSpec) -> list[TemplateRuleError]:
        """The fields, roles and follow-up date field one stage names are declared."""
        fields = {f.code: f for f in self.fields}
        known_fields = set(fields) | BUILTIN_FIELDS | ({LOSS_REASON_FIELD} if self.loss_reasons else set())
        roles = {r.code for r in self.roles} | BUILTIN_ROLES
        where = f"stages.{stage.code}"
        problems = [
            TemplateRuleError(
                f"{where}.required_fields",
                f"requires undeclared field {required.field!r} (declare it under 'fields'"
                f" or use one of {sorted(BUILTIN_FIELDS)}"
                f" or {LOSS_REASON_FIELD!r} with loss_reasons)",
            )
            for required in stage.required_fields
            if required.field not in known_fields
        ]
        problems += [
            TemplateRuleError(f"{where}.tasks", f"assigns a task to undeclared role {task.assignee!r}")
            for task in stage.tasks
            if task.assignee not in roles
        ]
        if stage.sla and stage.sla.escalate_to not in roles:
            problems.append(
                TemplateRuleError(f"{where}.sla", f"escalates to undeclared role {stage.sla.escalate_to!r}")
            )
        if stage.follow_up:
            follow = fields.get(stage.follow_up.field)
            if follow is None or follow.type not in ("date", "datetime"):
                problems.append(
                    TemplateRuleError(
                        f"{where}.follow_up",
                        f"follow-up field {stage.follow_up.field!r} must be a declared date or datetime field",
                    )
                )
            if stage.follow_up.assignee not in roles:
                problems.append(
                    TemplateRuleError(
                        f"{where}.follow_up", f"assigns to undeclared role {stage.follow_up.assignee!r}"
                    )
                )
        return problems

    def stage(self, code: str) -> StageSpec:
        for stage in self.stages:
            if stage.code == code:
                return stage
        raise KeyError(code)
