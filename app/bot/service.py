"""The Telegram qualification bot: one conversation per (connection, template, chat), driven by the
pure state machine in app.automations.qualification, ending in one outbox "deal" command.

`handle_update` runs inside the caller's transaction and only touches the database: it locks the
conversation row, works out the replies and saves the new state, so the state and the deal command
commit together. The replies go out after the commit (`process_update`): a crash in between loses a
reply, never answers twice. Each conversation remembers the last update it handled, so an update
delivered again (a polling offset not yet saved, a webhook retried after a lost 2xx) changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.automations import qualification
from app.automations.field_writes import by_kind_and_code, enum_value
from app.automations.qualification import LANGUAGES, Ask, Finished, Language, QualificationState
from app.bot.models import BotConversation
from app.config import Settings
from app.connections import service as connections
from app.connections.models import Connection
from app.db import dialect_insert
from app.funnels.models import FunnelMapping
from app.funnels.repository import find_funnel
from app.library.service import template_for
from app.messages.accounts import find_account, refuse_private_address, stored_secrets
from app.messages.models import ChannelAccount
from app.messages.optout import record_opt_out
from app.messages.statuses import OptOutSource
from app.outbox.enqueue import enqueue
from app.outbox.models import OutboxCommand
from app.rules.service import load_funnel
from connectors.channels.base import ChannelError
from connectors.channels.telegram import API_URL
from connectors.channels.telegram_bot import (
    MAX_CALLBACK_DATA,
    Incoming,
    KeyboardButton,
    TelegramBot,
    parse_update,
)
from connectors.descriptor import CRMDescriptor, descriptor_for
from funnel_templates.automations import QualificationSpec
from funnel_templates.loader import library
from funnel_templates.schema import FunnelTemplate

log = logging.getLogger("funnelsync.bot")

CHANNEL = "telegram"

TEXTS: dict[str, dict[Language, str]] = {
    "welcome": {
        "ru": "Здравствуйте! Ответьте, пожалуйста, на несколько вопросов — это займёт минуту.",
        "en": "Hello! Please answer a few questions; it takes a minute.",
    },
    "thanks": {
        "ru": "Спасибо! Мы получили ваши ответы, менеджер свяжется с вами.",
        "en": "Thank you! We have your answers; a manager will contact you.",
    },
    "done": {
        "ru": "Вы уже ответили на все вопросы, спасибо! Чтобы пройти опрос заново, отправьте /start.",
        "en": "You have answered every question, thank you! Send /start to answer them again.",
    },
    "stopped": {
        "ru": "Хорошо, мы больше не будем присылать вам сообщения. Чтобы пройти опрос, отправьте /start.",
        "en": "All right, we will not send you messages any more. Send /start to answer the questions.",
    },
}


class BotSetupError(ValueError):
    """The bot cannot run for this connection and template; the message says what is missing."""


@dataclass(frozen=True)
class BotTarget:
    """Everything a conversation needs about where its deal goes, loaded once per bot run."""

    connection_id: int
    connection_name: str
    crm: str
    settings: Mapping[str, Any]  # the connection's settings (assignees, messaging language)
    template: FunnelTemplate
    spec: QualificationSpec
    pipeline_id: str
    stage_ids: Mapping[str, str]  # template stage code -> CRM stage id
    field_keys: Mapping[str, str]  # template field code -> the key the CRM writes it under
    # Enumeration field code -> option code -> the value the CRM takes (its option id or the text).
    option_values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    text: str
    buttons: list[KeyboardButton] = field(default_factory=list)


# --- setup ----------------------------------------------------------------------------------------


async def load_target(session: AsyncSession, connection_name: str, template_key: str) -> BotTarget:
    """The connection and the provisioned template the bot works for; BotSetupError otherwise."""
    try:
        record = await connections.get_connection(session, connection_name)
    except connections.ConnectionNotFound as exc:
        raise BotSetupError(str(exc)) from exc
    template = template_for(record, template_key)
    if template is None:
        raise BotSetupError(f"no template {template_key!r} in the library (`funnelsync templates list`)")
    if template.qualification is None:
        with_bot = sorted(t.key for t in library().values() if t.qualification is not None)
        raise BotSetupError(
            f"template {template_key!r} has no qualification questions; templates with them: {', '.join(with_bot)}"
        )
    if await find_account(session, record.id, CHANNEL) is None:
        raise BotSetupError(
            f"connection {connection_name!r} has no telegram account; "
            f"`funnelsync channels set {connection_name} telegram --secret bot_token=ENV_VAR` adds one"
        )
    return await _provisioned(session, record, template, template.qualification)


async def _provisioned(
    session: AsyncSession, record: Connection, template: FunnelTemplate, spec: QualificationSpec
) -> BotTarget:
    funnel = await find_funnel(session, record.id, template.key)
    context = await load_funnel(session, record, funnel.id) if funnel is not None else None
    missing = [
        s for s in (spec.qualified_stage, spec.rejected_stage) if context and s not in context.rules.stage_ids
    ]
    if funnel is None or context is None or funnel.provisioned_at is None or missing:
        raise BotSetupError(
            f"template {template.key!r} is not provisioned on connection {record.name!r}"
            + (f" (stages {', '.join(missing)} have no CRM stage)" if missing else "")
            + f"; run `funnelsync provision {record.name} {template.key}` first"
        )
    rows = list(await session.scalars(select(FunnelMapping).where(FunnelMapping.funnel_id == funnel.id)))
    descriptor = descriptor_for(record.crm)
    return BotTarget(
        connection_id=record.id,
        connection_name=record.name,
        crm=record.crm,
        settings=dict(record.settings or {}),
        template=template,
        spec=spec,
        pipeline_id=context.rules.pipeline_id,
        stage_ids=dict(context.rules.stage_ids),
        field_keys={
            row.code: descriptor.field_write_key(row.crm_id, row.crm_name)
            for row in rows
            if row.kind == "field"
        },
        option_values=option_values(template, rows, descriptor),
    )


def option_values(
    template: FunnelTemplate, rows: Sequence[FunnelMapping], descriptor: CRMDescriptor
) -> dict[str, dict[str, str]]:
    """What the CRM takes for each enumeration option (app.automations.field_writes.enum_value); an
    option whose id provisioning did not record is left out: its text would not be stored."""
    mapped = by_kind_and_code(rows)
    out: dict[str, dict[str, str]] = {}
    for spec in template.fields:
        if spec.type != "enum":
            continue
        names = {o.code: o.name.ru for o in spec.options}
        values = {code: enum_value(descriptor, mapped, spec.code, code, names) for code in names}
        out[spec.code] = {code: value for code, value in values.items() if isinstance(value, str)}
    return out


async def telegram_account(session: AsyncSession, connection_id: int) -> ChannelAccount:
    account = await find_account(session, connection_id, CHANNEL)
    if account is None:
        raise BotSetupError("the connection's telegram account was removed")
    return account


async def open_bot(settings: Settings, account: ChannelAccount) -> TelegramBot:
    """The Bot API client for the account (the caller closes it); like app.messages.accounts.
    open_channel, whose TelegramChannel cannot send buttons."""
    config = dict(account.config or {})
    await refuse_private_address(settings, CHANNEL, config)
    token = stored_secrets(settings, account)["bot_token"]
    return TelegramBot(token, base_url=str(config.get("api_base_url") or API_URL))


# --- one update -----------------------------------------------------------------------------------


async def process_update(
    sessions: async_sessionmaker[AsyncSession], target: BotTarget, bot: TelegramBot, update: Mapping[str, Any]
) -> bool:
    """Handle one Update end to end: state and deal command committed, then the replies sent. True
    when it changed a conversation (False: not for the bot, or handled before)."""
    incoming = parse_update(update)
    if incoming is None:
        return False
    async with sessions.begin() as session:
        replies = await handle_update(session, target, incoming)
    try:
        if incoming.callback_id is not None:
            await bot.answer_callback(incoming.callback_id)
        for reply in replies or []:
            await bot.send_buttons(incoming.chat_id, reply.text, reply.buttons)
    except ChannelError as exc:
        # Committed already: the conversation goes on when the user writes again.
        log.warning("telegram bot: reply to chat %s failed: %s", incoming.chat_id, exc.provider_text)
    return replies is not None


async def handle_update(session: AsyncSession, target: BotTarget, incoming: Incoming) -> list[Reply] | None:
    """The replies to one user action, the conversation saved; None when this update was handled
    already (nothing changes, nothing is sent)."""
    conversation = await _conversation(session, target, incoming.chat_id)
    stored = dict(conversation.state or {})
    handled = stored.get("update_id")
    if isinstance(handled, int) and incoming.update_id <= handled:
        return None
    state = _state(stored)
    command = _command(incoming)
    if command == "stop":
        await record_opt_out(session, target.connection_id, CHANNEL, incoming.chat_id, OptOutSource.COMMAND)
        language = state.language if state else _language(target, incoming)
        replies = [Reply(TEXTS["stopped"][language])]
    elif command == "start" or state is None:
        state, replies = _start(target, incoming)
        conversation.outcome = None
        conversation.command_id = None
    elif conversation.outcome is not None:
        replies = [Reply(TEXTS["done"][state.language])]
    else:
        state, replies = await _answer(session, target, conversation, state, incoming)
    conversation.state = {**(state.to_dict() if state else {}), "update_id": incoming.update_id}
    return replies


async def _conversation(session: AsyncSession, target: BotTarget, chat_id: str) -> BotConversation:
    """The chat's conversation, created when new, locked for this transaction (PostgreSQL), so two
    deliveries for one chat are handled one after the other."""
    await session.execute(
        dialect_insert(session, BotConversation)
        .values(
            connection_id=target.connection_id, template_key=target.template.key, chat_id=chat_id, state={}
        )
        .on_conflict_do_nothing(index_elements=["connection_id", "template_key", "chat_id"])
    )
    conversation = await session.scalar(
        select(BotConversation)
        .where(
            BotConversation.connection_id == target.connection_id,
            BotConversation.template_key == target.template.key,
            BotConversation.chat_id == chat_id,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert conversation is not None  # inserted just above unless it existed
    return conversation


def _state(stored: Mapping[str, Any]) -> QualificationState | None:
    """The saved conversation state; None before /start (or for a record this code cannot read,
    which then starts over rather than failing every update of the chat)."""
    if "language" not in stored:
        return None
    try:
        return QualificationState.from_dict(stored)
    except ValueError:
        return None


def _command(incoming: Incoming) -> str | None:
    """ "start" or "stop" for /start and /stop (also "/start payload" and "/stop@botname")."""
    if incoming.callback_id is not None or not incoming.text.startswith("/"):
        return None
    name = incoming.text[1:].split(maxsplit=1)[0].split("@", 1)[0].lower() if incoming.text[1:] else ""
    return name if name in ("start", "stop") else None


def _language(target: BotTarget, incoming: Incoming) -> Language:
    """The user's Telegram language when the bot speaks it, else the connection's messaging language."""
    code = (incoming.language_code or "").split("-", 1)[0].lower()
    for language in LANGUAGES:
        if code == language:
            return language
    messaging = target.settings.get("messaging")
    configured = messaging.get("language") if isinstance(messaging, Mapping) else None
    return next((language for language in LANGUAGES if language == configured), "ru")


def _start(target: BotTarget, incoming: Incoming) -> tuple[QualificationState, list[Reply]]:
    language = _language(target, incoming)
    ask = qualification.start(target.spec, language)
    return ask.state, [Reply(TEXTS["welcome"][language]), _question(ask)]


async def _answer(
    session: AsyncSession,
    target: BotTarget,
    conversation: BotConversation,
    state: QualificationState,
    incoming: Incoming,
) -> tuple[QualificationState, list[Reply]]:
    reply = _reply_text(target.spec, state, incoming)
    if reply is None:  # a button of an earlier question: already answered
        return state, []
    outcome = qualification.answer(target.spec, state, reply)
    if isinstance(outcome, Ask):
        return outcome.state, [_question(outcome)]
    key = f"bot:telegram:{conversation.id}:{incoming.update_id}"
    await enqueue(
        session,
        connection_id=target.connection_id,
        kind="deal",
        payload=deal_payload(target, outcome, incoming),
        idempotency_key=key,
    )
    conversation.command_id = await session.scalar(
        select(OutboxCommand.id).where(OutboxCommand.idempotency_key == key)
    )
    conversation.outcome = "qualified" if outcome.qualified else "rejected"
    answers = {q.code: outcome.fields[q.field] for q in target.spec.questions}
    return QualificationState(state.language, answers), [Reply(TEXTS["thanks"][state.language])]


def _current_code(spec: QualificationSpec, state: QualificationState) -> str:
    question = qualification.current_question(spec, state)
    assert question is not None  # the conversation was not over
    return question.code


def _reply_text(spec: QualificationSpec, state: QualificationState, incoming: Incoming) -> str | None:
    """What the user answered the current question with: the typed text, or the option a button
    of the current question carries; None for a button of another question."""
    if incoming.callback_id is None:
        return incoming.text
    question_code, _, option_code = incoming.text.partition(":")  # a press carries callback_data
    if question_code != _current_code(spec, state):
        return None
    return option_code


def _question(ask: Ask) -> Reply:
    text = f"{ask.hint}\n\n{ask.text}" if ask.hint else ask.text
    return Reply(
        text, [KeyboardButton(b.label, callback_data(ask.question_code, b.code)) for b in ask.buttons]
    )


def callback_data(question_code: str, option_code: str) -> str:
    """A button says which question it answers, so a press on an old message cannot answer the
    current question; the template validator keeps codes short enough for Telegram's 64 bytes."""
    data = f"{question_code}:{option_code}"
    if len(data.encode()) > MAX_CALLBACK_DATA:
        raise ValueError(f"button data {data!r} is over Telegram's {MAX_CALLBACK_DATA} bytes")
    return data


# --- the deal -------------------------------------------------------------------------------------


def deal_payload(target: BotTarget, finished: Finished, incoming: Incoming) -> dict[str, Any]:
    """The outbox "deal" command: the qualified or rejected stage, the answers in their fields. The
    template has no field for a Telegram chat, so the chat id goes into the title, where a manager
    sees it and can search for it."""
    return {
        "pipeline_id": target.pipeline_id,
        "stage_id": target.stage_ids[finished.stage],
        "title": f"Telegram: {incoming.display_name} (chat {incoming.chat_id})",
        "fields": deal_fields(target, finished),
        "responsible_id": responsible_id(target.template, target.settings),
        "contact_ids": [],
        "amount": _number(finished.fields["amount"]) if "amount" in finished.fields else None,
    }


def deal_fields(target: BotTarget, finished: Finished) -> dict[str, Any]:
    """Answers by CRM field key. A field the funnel has no CRM field for is left out, as is a typed
    number that is not one. "amount" is the deal's own amount (deal_payload), not a custom field."""
    values: dict[str, Any] = {}
    for code, answer in finished.fields.items():
        key = target.field_keys.get(code)
        value = _field_value(target, code, answer)
        if key is not None and value is not None:
            values[key] = value
    return values


def _field_value(target: BotTarget, code: str, answer: str) -> Any:
    """An enum gets the option as the CRM takes it (BotTarget.option_values), a boolean True/False,
    a number its digits, a string or text with options the option's name."""
    spec = next((f for f in target.template.fields if f.code == code), None)
    if spec is None:
        return None
    if spec.type == "boolean":
        return answer == "yes"
    if spec.type == "enum":
        return target.option_values.get(code, {}).get(answer)
    if spec.type in ("number", "money"):
        return _number(answer)
    question = next(q for q in target.spec.questions if q.field == code)
    option = next((o for o in question.options if o.code == answer), None)
    return option.name.ru if option else answer


def _number(text: str) -> str | None:
    cleaned = text.replace(" ", "").replace("\u00a0", "").replace(",", ".")
    try:
        Decimal(cleaned)
    except InvalidOperation:
        return None
    return cleaned


def responsible_id(template: FunnelTemplate, settings: Mapping[str, Any]) -> str | None:
    """The user of the first role the template declares that the connection assigns, else the
    supervisor; None leaves it to the CRM (the webhook's or token's user)."""
    roles = settings.get("roles")
    assigned = roles if isinstance(roles, Mapping) else {}
    for role in template.roles:
        if assigned.get(role.code):
            return str(assigned[role.code])
    supervisor = settings.get("supervisor_id")
    return str(supervisor) if supervisor else None
