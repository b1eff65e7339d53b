"""Dashboard pages (mounted at "/"): overview, failures, funnel board and analytics, deal, templates.

Pages are thin: each calls a read service from app.analytics (or deals/library) and renders it. Every
page but /login needs the session cookie; every POST form needs the session's CSRF token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.analytics import board, overview, service
from app.analytics.funnels import BadPeriod, FunnelNotFound, load_funnel, parse_period
from app.api.deps import SessionsDep, SettingsDep
from app.config import Settings
from app.connections import service as connections
from app.connections.connector import connected
from app.connections.health import crm_problem, error_from
from app.connections.users import page_names
from app.dashboard.auth import (
    CsrfDep,
    SessionDep,
    end_session,
    load_session,
    login_token_matches,
    safe_next,
    start_session,
)
from app.dashboard.i18n import lang_of, translator
from app.dashboard.render import is_partial, render
from app.db import utcnow
from app.deals.service import DealNotFound, get_deal
from app.errors import NotFound
from app.funnels.plan import PlanLimitError
from app.funnels.service import provision
from app.library.service import (
    MAX_TEMPLATE_BYTES,
    TemplateNotFound,
    TemplateTooLarge,
    get_template,
    list_templates,
    niches,
    origin,
    parse_upload,
)
from app.messages.service import deal_messages
from app.outbox import history as outbox_history
from app.outbox import retry as outbox_retry
from app.outbox import service as outbox
from app.outbox.statuses import KINDS, RETRYABLE_STATUSES
from app.waker import INBOX_JOB, WakerDep
from app.webhooks import service as inbox
from connectors.base import CRMError
from funnel_templates.loader import TemplateError
from funnel_templates.schema import FunnelTemplate

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}
# Read once at import: two small files, and no file-system access per request.
STATIC_FILES = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_TYPES}


@router.get("/static/dashboard/{name}")
async def static_file(name: str) -> Response:
    # A fixed allow-list: no path from the URL ever reaches the file system.
    if name not in STATIC_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    return Response(
        STATIC_FILES[name], media_type=STATIC_TYPES[name], headers={"Cache-Control": "public, max-age=300"}
    )


@router.get("/login")
async def login_form(request: Request, next: str = "/") -> Response:
    if await load_session(request) is not None:
        return RedirectResponse(safe_next(next), status.HTTP_303_SEE_OTHER)
    return render(request, "login.html", {"next": safe_next(next), "error": None})


@router.post("/login")
async def login(
    request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"
) -> Response:
    if not login_token_matches(request, token):
        return render(
            request,
            "login.html",
            {"next": safe_next(next), "error": "wrong_token"},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    response = RedirectResponse(safe_next(next), status.HTTP_303_SEE_OTHER)
    await start_session(request, response)
    return response


@router.post("/logout")
async def logout(request: Request, session: CsrfDep) -> Response:
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    await end_session(request, session, response)
    return response


@router.get("/")
async def overview_page(
    request: Request, _: SessionDep, sessions: SessionsDep, settings: SettingsDep
) -> HTMLResponse:
    async with sessions() as session:
        data = await overview.overview(session)
        strip = await overview.summary(session, data, settings.reconcile_interval_seconds)
    template = "_overview_live.html" if is_partial(request) else "overview.html"
    return render(request, template, {"overview": data, "summary": strip, "active": "overview"})


FilterField = Annotated[str, Form()]
StatusField = Annotated[str, Form(alias="status")]
RETRY_SCOPES = ("selected", "matching")


@router.get("/failures")
async def failures_page(
    request: Request,
    _: SessionDep,
    sessions: SessionsDep,
    connection: str = "",
    kind: str = "",
    status_: Annotated[str, Query(alias="status")] = "",
    retried: int | None = None,
) -> HTMLResponse:
    """Failed events and failed or dead commands, narrowed by the filter form ("" means all)."""
    async with sessions() as session:
        try:
            chosen = await overview.failure_filter(session, connection, kind, status_)
        except (overview.BadFilter, NotFound) as exc:
            return _filter_error(request, exc)
        data = await overview.failures(
            session, connection_id=chosen.connection_id, kind=chosen.kind, status=chosen.status
        )
        choices = await connections.list_connections(session)
    context = {
        "failures": data,
        "filter": chosen,
        "connections": choices,
        "kinds": KINDS,
        "statuses": RETRYABLE_STATUSES,
        "active": "failures",
        "retried": retried,
    }
    return render(request, "failures.html", context)


def _chosen_ids(scope: str, only: int | None, ticked: list[int] | None) -> list[int] | None:
    """A row's own button wins; then "all matching" (None: the filter decides); else the ticked ones."""
    if only is not None:
        return [only]
    return None if scope == "matching" else list(ticked or [])


# Retry what the page's form chose: these ids, or None for everything the filter matches.
RetryChosen = Callable[[AsyncSession, overview.FailureFilter, list[int] | None], Awaitable[int]]


async def _retry_from_page(
    request: Request,
    sessions: async_sessionmaker[AsyncSession],
    scope: str,
    ids: list[int] | None,
    fields: tuple[str, str, str],
    retry: RetryChosen,
) -> tuple[int, Response]:
    """The two retry forms' common path: check the scope and the filter carried in hidden fields
    (nothing is written when either is bad), retry, and go back to the page with the same filter."""
    if scope not in RETRY_SCOPES:
        return 0, _bad_request(request, f"unknown retry scope {scope!r}")
    async with sessions.begin() as session:
        try:
            chosen = await overview.failure_filter(session, *fields)
        except (overview.BadFilter, NotFound) as exc:
            return 0, _filter_error(request, exc)
        count = await retry(session, chosen, ids)
    return count, RedirectResponse(f"/failures?{chosen.query(retried=count)}", status.HTTP_303_SEE_OTHER)


@router.post("/failures/retry")
async def retry_failures(
    request: Request,
    _: CsrfDep,
    sessions: SessionsDep,
    scope: Annotated[str, Form()] = "selected",
    command_id: Annotated[list[int] | None, Form()] = None,
    only: Annotated[int | None, Form()] = None,
    connection: FilterField = "",
    kind: FilterField = "",
    status_: StatusField = "",
) -> Response:
    """Queue failed or dead commands again: one (its row's button), the ticked ones, or all matching
    the page's filter (carried in hidden fields). Back to the page with the same filter."""

    async def retry(session: AsyncSession, chosen: overview.FailureFilter, ids: list[int] | None) -> int:
        if ids is None:
            return await outbox_retry.retry_matching(
                session, status=chosen.status, connection_id=chosen.connection_id, kind=chosen.kind
            )
        return await outbox_retry.retry_matching(session, ids=ids) if ids else 0

    ids = _chosen_ids(scope, only, command_id)
    _count, response = await _retry_from_page(
        request, sessions, scope, ids, (connection, kind, status_), retry
    )
    return response


@router.post("/failures/retry-events")
async def retry_failed_events(
    request: Request,
    _: CsrfDep,
    sessions: SessionsDep,
    waker: WakerDep,
    scope: Annotated[str, Form()] = "selected",
    event_id: Annotated[list[int] | None, Form()] = None,
    only: Annotated[int | None, Form()] = None,
    connection: FilterField = "",
    kind: FilterField = "",
    status_: StatusField = "",
) -> Response:
    """Send failed inbox events back to the processor: one, the ticked ones, or all of the filter's
    connection (kind and status are commands' filters: only carried back to the page)."""

    async def retry(session: AsyncSession, chosen: overview.FailureFilter, ids: list[int] | None) -> int:
        if ids is None:
            return await inbox.retry_events(session, connection_id=chosen.connection_id)
        return await inbox.retry_events(session, ids=ids)

    ids = _chosen_ids(scope, only, event_id)
    count, response = await _retry_from_page(
        request, sessions, scope, ids, (connection, kind, status_), retry
    )
    if count:
        waker.wake(INBOX_JOB)
    return response


def _bad_request(request: Request, message: str) -> HTMLResponse:
    context = {"message": message, "heading": "bad_request", "back_url": "/failures"}
    return render(request, "error.html", context, status_code=status.HTTP_400_BAD_REQUEST)


def _filter_error(request: Request, exc: Exception) -> HTMLResponse:
    """An unknown connection name is 404, a kind or status the lists do not know is 400; the page
    links back to the unfiltered list."""
    if isinstance(exc, NotFound):
        context = {"message": str(exc), "back_url": "/failures"}
        return render(request, "error.html", context, status_code=status.HTTP_404_NOT_FOUND)
    return _bad_request(request, str(exc))


def _not_found(request: Request, message: str) -> HTMLResponse:
    return render(request, "error.html", {"message": message}, status_code=status.HTTP_404_NOT_FOUND)


@router.get("/funnels/{funnel_id}")
async def board_page(
    request: Request,
    funnel_id: int,
    _: SessionDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    stage: str = "",
    page: str = "",
    responsible: str = "",
) -> HTMLResponse:
    """Deals per stage, longest waiting first; `stage` and `page` page one column, `responsible`
    (a CRM user id) narrows the board to that user's deals."""
    async with sessions() as session:
        try:
            ctx = await load_funnel(session, funnel_id)
            query = board.board_query(ctx, stage, page, responsible)
        except FunnelNotFound as exc:
            return _not_found(request, str(exc))
        except board.BadBoardQuery as exc:
            context = {"message": str(exc), "heading": "bad_request", "back_url": f"/funnels/{funnel_id}"}
            return render(request, "error.html", context, status_code=status.HTTP_400_BAD_REQUEST)
        view = await board.board_view(session, ctx, query=query)
        record = await connections.get_connection(session, ctx.ref.connection)
    names = await page_names(request.app.state, settings, record)
    template = "_board_live.html" if is_partial(request) else "board.html"
    page_context = {"view": view, "ctx": ctx, "user_label": names, "names_error": names.error}
    return render(request, template, {**page_context, "active": "board"})


@router.get("/funnels/{funnel_id}/analytics")
async def analytics_page(
    request: Request,
    funnel_id: int,
    _: SessionDep,
    sessions: SessionsDep,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
) -> HTMLResponse:
    try:
        period = parse_period(from_ or None, to or None, utcnow())
    except BadPeriod as exc:
        return render(
            request, "error.html", {"message": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
        )
    async with sessions() as session:
        try:
            ctx = await load_funnel(session, funnel_id)
        except FunnelNotFound as exc:
            return _not_found(request, str(exc))
    data = await service.funnel_analytics(sessions, ctx, period)
    # The form shows the inclusive last day; the period itself ends at the exclusive bound.
    last_day = period.end - timedelta(microseconds=1)
    context = {
        "a": data,
        "ctx": ctx,
        "stages": {s.code: s for s in ctx.stages},
        "process_codes": [s.code for s in ctx.stages if s.semantics != "failure"],
        "period_to": last_day.strftime("%Y-%m-%d"),
    }
    return render(request, "analytics.html", context)


@router.get("/deals/{deal_id}")
async def deal_page(
    request: Request, deal_id: int, _: SessionDep, sessions: SessionsDep, settings: SettingsDep
) -> HTMLResponse:
    async with sessions() as session:
        try:
            deal = await get_deal(session, deal_id)
        except DealNotFound as exc:
            return _not_found(request, str(exc))
        commands = await board.deal_commands(session, deal_id)
        # Every attempt of every command, manual retries included: what was tried, when, and why it
        # failed, even after a retry by hand replaced the command's last error.
        attempts = await outbox_history.attempt_history(session, [c.id for c in commands])
        waits_for = await outbox.prerequisites(session, [c.id for c in commands])
        funnel_id = await board.deal_funnel_id(session, deal_id)
        ctx = await load_funnel(session, funnel_id) if funnel_id is not None else None
        field_rows = await board.deal_field_rows(session, ctx, deal.fields)
        record = await connections.get_connection(session, deal.connection)
        messages = await deal_messages(session, deal_id)
    names = await page_names(request.app.state, settings, record)
    stages = {s.code: s for s in ctx.stages} if ctx else {}
    context = {"deal": deal, "commands": commands, "ctx": ctx, "stages": stages, "field_rows": field_rows}
    context |= {"user_label": names, "names_error": names.error, "deal_messages": messages}
    return render(request, "deal.html", {**context, "attempts": attempts, "waits_for": waits_for})


@router.get("/templates")
async def templates_page(request: Request, _: SessionDep, niche: str | None = None) -> HTMLResponse:
    known = niches()
    chosen = niche if niche in known else None
    templates = list_templates(chosen)
    context = {"templates": templates, "niches": known, "niche": chosen, "active": "templates"}
    return render(
        request, "templates_list.html", {**context, "origins": {t.key: origin(t.key) for t in templates}}
    )


# Declared before /templates/{key}, which would otherwise take "upload" for a key.
@router.get("/templates/upload")
async def upload_page(request: Request, _: SessionDep, sessions: SessionsDep) -> HTMLResponse:
    """A company's own template: the file and the connection; the next page lists every problem or
    shows the plan."""
    async with sessions() as session:
        choices = await connections.list_connections(session)
    return render(request, "template_upload.html", {"connections": choices, "active": "templates"})


@router.post("/templates/upload")
async def upload_template(
    request: Request,
    _: CsrfDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    connection: Annotated[str, Form()],
    file: Annotated[UploadFile | None, File()] = None,
    template_yaml: Annotated[str, Form()] = "",
    apply: Annotated[int, Form()] = 0,
) -> HTMLResponse:
    """The uploaded file (or, from the plan page's apply button, the same YAML carried back) is
    validated like `templates validate` (422 listing every problem; 413 over 256 KB), then planned
    and, on confirm, provisioned; applying keeps the YAML with the connection."""
    if file is not None and file.filename:
        data, name, size = await file.read(MAX_TEMPLATE_BYTES + 1), file.filename, file.size
    else:
        data, name, size = template_yaml.encode(), "template.yaml", None
    t = translator(lang_of(request))
    if not data.strip():
        page = {"message": t("tpl_no_file"), "heading": "bad_request", "back_url": "/templates/upload"}
        return render(request, "error.html", page, status_code=status.HTTP_400_BAD_REQUEST)
    try:
        template, text = parse_upload(data, name)
    except TemplateTooLarge:
        message = t("tpl_too_large", size=(size or len(data)) // 1024, limit=MAX_TEMPLATE_BYTES // 1024)
        page = {"message": message, "back_url": "/templates/upload"}
        return render(request, "error.html", page, status_code=status.HTTP_413_CONTENT_TOO_LARGE)
    except TemplateError as exc:
        async with sessions() as session:
            choices = await connections.list_connections(session)
        form: dict[str, object] = {"connections": choices, "chosen": connection, "active": "templates"}
        context = {**form, "problems": exc.problems, "file_name": name}
        return render(request, "template_upload.html", context, status_code=422)
    return await _plan_page(
        request, sessions, settings, connection, template, apply=bool(apply), own_text=text
    )


@router.get("/templates/{key}")
async def template_page(request: Request, key: str, _: SessionDep, sessions: SessionsDep) -> HTMLResponse:
    try:
        template = get_template(key)
    except TemplateNotFound as exc:
        return _not_found(request, str(exc))
    async with sessions() as session:
        choices = await connections.list_connections(session)
    return render(
        request, "template_detail.html", {"tpl": template, "active": "templates", "connections": choices}
    )


@router.post("/templates/{key}/provision")
async def provision_page(
    request: Request,
    key: str,
    _: CsrfDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    connection: Annotated[str, Form()],
    apply: Annotated[int, Form()] = 0,
) -> HTMLResponse:
    """The plan first (nothing written); the page's own button applies it, as `provision` does."""
    try:
        template = get_template(key)
    except NotFound as exc:
        return _not_found(request, str(exc))
    return await _plan_page(request, sessions, settings, connection, template, apply=bool(apply))


async def _plan_page(
    request: Request,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    connection: str,
    template: FunnelTemplate,
    *,
    apply: bool,
    own_text: str | None = None,
) -> HTMLResponse:
    """Plan (and apply) a template into a connection and show the plan. A CRM failure is a readable
    page: 503 when transient (down, timed out, rate-limited), 502 when the CRM refused; while
    applying, with the plan and the note that a second apply completes it."""
    back_url = "/templates/upload" if own_text is not None else f"/templates/{template.key}"
    try:
        async with connected(sessions, settings, connection) as (record, connector):
            outcome = await provision(
                sessions, settings, record, connector, template, dry_run=not apply, own_text=own_text
            )
    except NotFound as exc:
        return _not_found(request, str(exc))
    except PlanLimitError as exc:
        return render(request, "error.html", {"message": f"{exc}; nothing was written"}, status_code=422)
    except CRMError as exc:  # while reading the CRM for the plan: nothing was written
        problem = crm_problem(exc, "provisioning")
        page = {"message": f"{problem.body['detail']}; nothing was written", "heading": "crm_failed"}
        response = render(
            request, "error.html", {**page, "back_url": back_url}, status_code=problem.status_code
        )
        response.headers.update(problem.headers)  # Retry-After, when the CRM said how long
        return response
    failure = (
        crm_problem(error_from(outcome.error_class, outcome.error), "provisioning") if outcome.error else None
    )
    context = {
        "tpl": template,
        "connection": connection,
        "plan": outcome.plan.as_json(),
        "has_writes": outcome.plan.has_writes,
        "applied": outcome.applied,
        "error": failure.body["detail"] if failure else None,
        "own_yaml": own_text,
        "back_url": back_url,
        "active": "templates",
    }
    return render(request, "provision.html", context, status_code=failure.status_code if failure else 200)
