"""/api/v4/leads/pipelines and their statuses (docs/crm/amocrm.md §4)."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from connectors.amocrm.sandbox.common import array_body, base, is_int, json_body, sandbox
from connectors.amocrm.sandbox.errors import Errors, hal, no_content, not_found, request_ids
from connectors.amocrm.sandbox.state import COLORS, LOST, MAX_PIPELINES, MAX_STATUSES, WON, SandboxState

router = APIRouter()
PIPELINES = "/api/v4/leads/pipelines"


def _status_out(status: dict[str, Any], href: str) -> dict[str, Any]:
    out = copy.deepcopy(status)
    out["_links"] = {"self": {"href": f"{href}/{status['pipeline_id']}/statuses/{status['id']}"}}
    return out


def _pipeline_out(pipeline: dict[str, Any], href: str) -> dict[str, Any]:
    out = {k: v for k, v in pipeline.items() if k != "_embedded"}
    out["_links"] = {"self": {"href": f"{href}/{pipeline['id']}"}}
    out["_embedded"] = {"statuses": [_status_out(s, href) for s in pipeline["_embedded"]["statuses"]]}
    return out


def _limit_error(errors: Errors, rid: str, detail: str) -> None:
    # Real wording not captured (UNVERIFIED, docs/crm/amocrm.md §4); code/path follow the documented shape.
    errors.add(rid, "", "LimitExceeded", detail)


def _check_status(errors: Errors, rid: str, path: str, item: dict[str, Any], creating: bool) -> None:
    name = item.get("name")
    if creating or "name" in item:
        if not isinstance(name, str) or not name.strip():
            errors.blank(rid, f"{path}name")
        elif len(name) > 255:
            errors.add(
                rid,
                f"{path}name",
                "TooLong",
                "This value is too long. It should have 255 characters or less.",
            )
    if "sort" in item and not is_int(item["sort"]):
        errors.type(rid, f"{path}sort", "int")
    if (creating or "color" in item) and item.get("color") not in COLORS:
        errors.choice(rid, f"{path}color")


@router.get(PIPELINES)
async def list_pipelines(request: Request) -> Response:
    state = sandbox(request).state
    href = base(request) + PIPELINES
    return hal(
        {
            "_total_items": len(state.pipelines),
            "_links": {"self": {"href": href}},
            "_embedded": {"pipelines": [_pipeline_out(p, href) for p in state.pipelines]},
        }
    )


@router.get(PIPELINES + "/{pipeline_id:int}")
async def get_pipeline(request: Request, pipeline_id: int) -> Response:
    pipeline = sandbox(request).state.pipeline(pipeline_id)
    if pipeline is None:
        return not_found("Pipeline not found")
    return hal(_pipeline_out(pipeline, base(request) + PIPELINES))


@router.post(PIPELINES)
async def create_pipelines(request: Request) -> Response:
    state = sandbox(request).state
    items = await array_body(request, limit=50)
    rids = request_ids(items)
    errors = Errors()
    room = MAX_PIPELINES - len(state.pipelines)
    for index, (rid, item) in enumerate(zip(rids, items, strict=True)):
        _check_new_pipeline(errors, rid, item, over_limit=index >= room)
    errors.raise_if_any()
    href = base(request) + PIPELINES
    created = []
    for rid, item in zip(rids, items, strict=True):
        out = _pipeline_out(_add_pipeline(state, item), href)
        out["request_id"] = rid
        created.append(out)
    return hal({"_total_items": len(created), "_embedded": {"pipelines": created}})


def _check_new_pipeline(errors: Errors, rid: str, item: dict[str, Any], *, over_limit: bool) -> None:
    """Record what is wrong with one pipeline of a create request (its name, its stages, the limits)."""
    if not isinstance(item.get("name"), str) or not item["name"].strip():
        errors.blank(rid, "name")
    if over_limit:
        _limit_error(errors, rid, f"Pipelines limit exceeded: an account can have at most {MAX_PIPELINES}")
    statuses = (item.get("_embedded") or {}).get("statuses")
    if not isinstance(statuses, list) or not any(isinstance(s, dict) and "id" not in s for s in statuses):
        errors.blank(rid, "_embedded.statuses")  # a pipeline cannot be created without stages
        return
    regular = 0
    for j, status in enumerate(statuses):
        path = f"_embedded.statuses.{j}."
        if not isinstance(status, dict):
            errors.type(rid, path.rstrip("."), "object")
        elif "id" in status:  # the pipeline's own won/lost stage: only its name may be given
            if status["id"] not in (WON, LOST):
                errors.choice(rid, f"{path}id")
            _check_status(errors, rid, path, {"name": status.get("name")}, creating=False)
        else:
            regular += 1
            _check_status(errors, rid, path, status, creating=True)
    if regular + 3 > MAX_STATUSES:
        _limit_error(errors, rid, f"Statuses limit exceeded: a pipeline can have at most {MAX_STATUSES}")


def _add_pipeline(state: SandboxState, item: dict[str, Any]) -> dict[str, Any]:
    """Create a checked pipeline with its stages; naming a won/lost stage renames the system one."""
    is_main = bool(item.get("is_main", False))
    if is_main:
        for other in state.pipelines:
            other["is_main"] = False
    pipeline = state.add_pipeline(
        item["name"].strip(), int(item.get("sort", 1)), is_main, bool(item.get("is_unsorted_on", True))
    )
    for status in item["_embedded"]["statuses"]:
        if "id" in status:
            system = state.status(pipeline, status["id"])
            if system is not None and status.get("name"):
                system["name"] = status["name"].strip()
        else:
            state.add_status(pipeline, status["name"].strip(), int(status.get("sort", 100)), status["color"])
    return pipeline


@router.patch(PIPELINES + "/{pipeline_id:int}")
async def update_pipeline(request: Request, pipeline_id: int) -> Response:
    state = sandbox(request).state
    pipeline = state.pipeline(pipeline_id)
    if pipeline is None:
        return not_found("Pipeline not found")
    item = await json_body(request)
    errors = Errors()
    if not isinstance(item, dict):
        errors.type("0", "", "object")
        errors.raise_if_any()
    if "name" in item and (not isinstance(item["name"], str) or not item["name"].strip()):
        errors.blank("0", "name")
    if "sort" in item and not is_int(item["sort"]):
        errors.type("0", "sort", "int")
    errors.raise_if_any()
    for key in ("name", "sort", "is_unsorted_on"):
        if key in item:
            pipeline[key] = item[key].strip() if key == "name" else item[key]
    if item.get("is_main"):
        for other in state.pipelines:
            other["is_main"] = other is pipeline
    return hal(_pipeline_out(pipeline, base(request) + PIPELINES))


@router.delete(PIPELINES + "/{pipeline_id:int}")
async def delete_pipeline(request: Request, pipeline_id: int) -> Response:
    state = sandbox(request).state
    pipeline = state.pipeline(pipeline_id)
    if pipeline is None:
        return not_found("Pipeline not found")
    errors = Errors()
    if pipeline["is_main"] or len(state.pipelines) == 1:
        errors.add("0", "id", "NotSupportedChoice", "The main pipeline cannot be deleted")
    if any(not lead["is_deleted"] and lead["pipeline_id"] == pipeline_id for lead in state.leads.values()):
        errors.add("0", "id", "NotSupportedChoice", "A pipeline with leads cannot be deleted")
    errors.raise_if_any()
    state.pipelines.remove(pipeline)
    return no_content()


# --- statuses -------------------------------------------------------------------------------------


def _pipeline_or_404(state: SandboxState, pipeline_id: int) -> dict[str, Any] | Response:
    pipeline = state.pipeline(pipeline_id)
    return not_found("Pipeline not found") if pipeline is None else pipeline


@router.get(PIPELINES + "/{pipeline_id:int}/statuses")
async def list_statuses(request: Request, pipeline_id: int) -> Response:
    pipeline = _pipeline_or_404(sandbox(request).state, pipeline_id)
    if isinstance(pipeline, Response):
        return pipeline
    href = base(request) + PIPELINES
    statuses = [_status_out(s, href) for s in pipeline["_embedded"]["statuses"]]
    return hal({"_total_items": len(statuses), "_embedded": {"statuses": statuses}})


@router.get(PIPELINES + "/{pipeline_id:int}/statuses/{status_id:int}")
async def get_status(request: Request, pipeline_id: int, status_id: int) -> Response:
    state = sandbox(request).state
    pipeline = _pipeline_or_404(state, pipeline_id)
    if isinstance(pipeline, Response):
        return pipeline
    status = state.status(pipeline, status_id)
    if status is None:
        return not_found("Status not found")
    return hal(_status_out(status, base(request) + PIPELINES))


@router.post(PIPELINES + "/{pipeline_id:int}/statuses")
async def create_statuses(request: Request, pipeline_id: int) -> Response:
    state = sandbox(request).state
    pipeline = _pipeline_or_404(state, pipeline_id)
    if isinstance(pipeline, Response):
        return pipeline
    items = await array_body(request)
    rids = request_ids(items)
    errors = Errors()
    room = MAX_STATUSES - len(pipeline["_embedded"]["statuses"])
    for index, (rid, item) in enumerate(zip(rids, items, strict=True)):
        _check_status(errors, rid, "", item, creating=True)
        if index >= room:
            _limit_error(errors, rid, f"Statuses limit exceeded: a pipeline can have at most {MAX_STATUSES}")
    errors.raise_if_any()
    href = base(request) + PIPELINES
    created = []
    for rid, item in zip(rids, items, strict=True):
        status = state.add_status(pipeline, item["name"].strip(), int(item.get("sort", 100)), item["color"])
        if isinstance(item.get("descriptions"), list):
            status["descriptions"] = item["descriptions"]
        out = _status_out(status, href)
        out["request_id"] = rid
        created.append(out)
    return hal({"_total_items": len(created), "_embedded": {"statuses": created}})


@router.patch(PIPELINES + "/{pipeline_id:int}/statuses/{status_id:int}")
async def update_status(request: Request, pipeline_id: int, status_id: int) -> Response:
    state = sandbox(request).state
    pipeline = _pipeline_or_404(state, pipeline_id)
    if isinstance(pipeline, Response):
        return pipeline
    status = state.status(pipeline, status_id)
    if status is None:
        return not_found("Status not found")
    item = await json_body(request)
    errors = Errors()
    if not isinstance(item, dict):
        errors.type("0", "", "object")
        errors.raise_if_any()
    _check_status(errors, "0", "", item, creating=False)
    if status["type"] == 1 and item:
        errors.choice("0", "id")  # the unsorted stage cannot be edited
    if status["id"] in (WON, LOST):
        for key in ("sort", "color"):  # won/lost keep their place and colour; only the name changes
            if key in item:
                errors.choice("0", key)
    errors.raise_if_any()
    for key in ("name", "sort", "color", "descriptions"):
        if key in item:
            status[key] = item[key].strip() if key == "name" else item[key]
    pipeline["_embedded"]["statuses"].sort(key=lambda s: s["sort"])
    return hal(_status_out(status, base(request) + PIPELINES))


@router.delete(PIPELINES + "/{pipeline_id:int}/statuses/{status_id:int}")
async def delete_status(request: Request, pipeline_id: int, status_id: int) -> Response:
    box = sandbox(request)
    state = box.state
    pipeline = _pipeline_or_404(state, pipeline_id)
    if isinstance(pipeline, Response):
        return pipeline
    status = state.status(pipeline, status_id)
    if status is None:
        return not_found("Status not found")
    errors = Errors()
    if status["type"] == 1 or status["id"] in (WON, LOST):
        errors.choice("0", "id")  # system stages cannot be deleted
    errors.raise_if_any()
    pipeline["_embedded"]["statuses"].remove(status)
    # Leads of a deleted stage move to the first stage (docs/crm/amocrm.md §4, UNVERIFIED for the real one).
    first = state.first_working_status(pipeline)
    for lead in state.leads.values():
        if lead["pipeline_id"] == pipeline_id and lead["status_id"] == status_id and first is not None:
            lead["status_id"] = first["id"]
            state.touch(lead, lead["updated_by"])
    return no_content()
