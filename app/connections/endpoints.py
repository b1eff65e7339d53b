"""/api/connections: add, list, show, check, resume, assignees."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.api.deps import SessionsDep, SettingsDep
from app.connections import health, service
from app.connections.check import check_connection
from app.connections.connector import connected
from app.connections.schemas import (
    AssigneesOut,
    AssigneesUpdate,
    CheckResult,
    ConnectionOut,
    validate_connection_input,
)
from app.status import assignees
from app.status.connection import ConnectionStatus, connection_status
from connectors.base import CRMError
from connectors.descriptor import ConnectionInput, descriptor_for

router = APIRouter(prefix="/connections", tags=["connections"])


def _connection_input(body: dict[str, Any]) -> ConnectionInput:
    """The body as the named CRM's input model. Validated here, not by the route's signature, so
    the union covers every CRM registered by now; errors are the same 422 FastAPI would send."""
    try:
        return validate_connection_input(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None


@router.post("", status_code=status.HTTP_201_CREATED)
async def add_connection(
    body: Annotated[dict[str, Any], Body()], sessions: SessionsDep, settings: SettingsDep
) -> ConnectionOut:
    """Add a connection: `crm` names the CRM, the other fields are that CRM's (see its docs)."""
    data = _connection_input(body)
    try:  # before an authorization code (or any credential) is sent to the address
        await service.refuse_private_urls(settings, service.input_urls(data))
    except service.CRMAddressRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    async with sessions() as session:
        try:
            await service.get_connection(session, data.name)
        except service.ConnectionNotFound:
            pass
        else:
            raise HTTPException(status.HTTP_409_CONFLICT, f"a connection named {data.name!r} already exists")
    try:
        tokens = await data.exchange_authorization()
    except CRMError as exc:
        crm = descriptor_for(data.crm).display_name
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{crm} refused the authorization code: {exc.crm_text}"
        ) from exc
    record = service.build_record(settings, data, tokens)
    async with sessions.begin() as session:
        try:
            await service.add_connection(session, record)
        except service.ConnectionExists as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return service.to_out(settings, record)


@router.get("")
async def list_connections(sessions: SessionsDep, settings: SettingsDep) -> list[ConnectionOut]:
    async with sessions() as session:
        return [service.to_out(settings, r) for r in await service.list_connections(session)]


@router.get("/{name}")
async def get_connection(name: str, sessions: SessionsDep, settings: SettingsDep) -> ConnectionOut:
    async with sessions() as session:
        return service.to_out(settings, await service.get_connection(session, name))


@router.post("/{name}/check", response_model=CheckResult)
async def check(name: str, sessions: SessionsDep, settings: SettingsDep) -> CheckResult | JSONResponse:
    """The account and its rights (200, `ok` false when rights are missing). When the CRM fails:
    503 if it is down, timed out or rate-limiting (Retry-After when known), 502 if it refused (bad
    credentials, blocked account), with the check's fields, `detail` in plain words and `crm_error`."""
    async with connected(sessions, settings, name) as (record, connector):
        checked = await check_connection(record, connector, sessions)
    if checked.error is None:
        await health.record_success(sessions, record.id)
        return checked.result
    await health.record_failure(sessions, record.id, checked.error)
    problem = health.crm_problem(checked.error, "the check")
    content = {**checked.result.model_dump(mode="json"), **problem.body, "detail": checked.result.problem}
    return JSONResponse(status_code=problem.status_code, content=content, headers=problem.headers)


@router.get("/{name}/status")
async def status_of(name: str, sessions: SessionsDep) -> ConnectionStatus:
    async with sessions() as session:
        return await connection_status(session, await service.get_connection(session, name))


@router.post("/{name}/resume")
async def resume(name: str, sessions: SessionsDep, settings: SettingsDep) -> ConnectionOut:
    """Resume a connection paused by an auth failure or a CRM block; its queue runs again."""
    async with sessions.begin() as session:
        return service.to_out(settings, await service.resume_connection(session, name))


@router.get("/{name}/assignees")
async def get_assignees(name: str, sessions: SessionsDep) -> AssigneesOut:
    """Who gets the tasks the rules assign to the supervisor and to template roles, and the roles
    the connection's provisioned templates declare."""
    async with sessions() as session:
        return await assignees.get_assignees(session, name)


@router.patch("/{name}/assignees")
async def set_assignees(name: str, body: AssigneesUpdate, sessions: SessionsDep) -> AssigneesOut:
    """Set or clear the supervisor and role users; keys left out stay as they are, null clears.
    An unknown role or a non-numeric user id is a 422 and changes nothing."""
    supervisor = body.supervisor_id if "supervisor_id" in body.model_fields_set else assignees.KEEP
    async with sessions.begin() as session:
        try:
            return await assignees.set_assignees(session, name, supervisor_id=supervisor, roles=body.roles)
        except assignees.InvalidAssignees as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
