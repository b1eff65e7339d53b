"""Telegram Bot API sandbox: the subset FunnelSync uses, answered the way api.telegram.org answers.

Bot API paths: /bot<token>/METHOD, GET or POST, parameters in the query string, a JSON body or a
form body; method names are case-insensitive. getMe, sendMessage (with an inline keyboard in
`reply_markup`), answerCallbackQuery, getUpdates (long polling with `timeout`, `offset` confirming
earlier updates, a negative offset counting from the end), setWebhook, deleteWebhook, getWebhookInfo. A wrong token gets 401 {"ok": false, "error_code": 401,
"description": "Unauthorized"}, an unknown method 404 "Not Found". One deviation: setWebhook takes
http:// URLs (the real one insists on HTTPS), since a loopback receiver has no certificate.

Control endpoints under /_sandbox:
  GET  /_sandbox/messages[?chat_id=]  messages the bot sent, in order (each with its chat)
  GET  /_sandbox/stats                Bot API calls by method
  POST /_sandbox/updates              {"chat_id", "text", "first_name"?, "username"?, "language_code"?}:
                                      a user writes to the bot; creates an Update (posted to the
                                      webhook when one is set)
  POST /_sandbox/callbacks            {"chat_id", "data", "first_name"?, "username"?, "language_code"?}:
                                      the user presses the inline button with this callback_data on
                                      the bot's latest message in the chat offering it (400 when none
                                      does); creates a callback_query Update like the above
  GET  /_sandbox/callback_answers     the callback query ids the bot answered
  POST /_sandbox/faults               {"kind": "blocked", "chat_id"} (403 bot was blocked by the user),
                                      {"kind": "chat_not_found", "chat_id"} (400), {"kind": "flood",
                                      "count", "retry_after"} (429 for the next `count` calls),
                                      {"kind": "server_error", "count", "status"} (a proxy's HTML 502)
  DELETE /_sandbox/faults             drop every fault
  POST /_sandbox/reset                drop messages, updates, faults, webhook and stats
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from connectors.http import tls_context

log = logging.getLogger("funnelsync.sandbox.telegram")

MAX_TEXT = 4096  # characters in one message (sendMessage `text`: 1-4096 after entity parsing)
MAX_CALLBACK_DATA = 64  # bytes of an InlineKeyboardButton's callback_data (1-64)
SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
FAULT_KINDS = ("blocked", "chat_not_found", "flood", "server_error")


@dataclass
class TelegramSandboxConfig:
    token: str = "123456789:SANDBOX-token_0123456789abcdefghij"
    bot_first_name: str = "FunnelSync Sandbox"
    bot_username: str = "funnelsync_sandbox_bot"
    first_update_id: int = 100_000  # real update ids are large; tests must not assume they start at 1

    @property
    def bot_id(self) -> int:
        return int(self.token.split(":", 1)[0])


class BotApiError(Exception):
    def __init__(self, error_code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return JSONResponse(body, status_code=self.error_code)


@dataclass
class CallFault:
    kind: str  # "flood" or "server_error"
    remaining: int
    retry_after: int = 1
    status: int = 502


@dataclass
class Webhook:
    url: str
    secret_token: str | None = None


@dataclass
class Bot:
    """The state of one emulated bot: what it sent, what users wrote to it, and the faults."""

    config: TelegramSandboxConfig
    sent: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # not yet confirmed
    next_update_id: int = 0
    message_ids: Counter[str] = field(default_factory=Counter)  # message ids count per chat
    blocked: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    call_faults: list[CallFault] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    webhook: Webhook | None = None
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    callback_queries: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> the query
    answered_callbacks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.next_update_id = self.next_update_id or self.config.first_update_id

    def reset(self) -> None:
        self.sent.clear()
        self.updates.clear()
        self.message_ids.clear()
        self.calls.clear()
        self.clear_faults()
        self.webhook = None
        self.callback_queries.clear()
        self.answered_callbacks.clear()

    def clear_faults(self) -> None:
        self.blocked.clear()
        self.missing.clear()
        self.call_faults.clear()

    @property
    def user(self) -> dict[str, Any]:
        return {
            "id": self.config.bot_id,
            "is_bot": True,
            "first_name": self.config.bot_first_name,
            "username": self.config.bot_username,
        }

    def message_id(self, chat_id: int | str) -> int:
        self.message_ids[str(chat_id)] += 1
        return self.message_ids[str(chat_id)]

    def take_call_fault(self) -> CallFault | None:
        for fault in self.call_faults:
            if fault.remaining > 0:
                fault.remaining -= 1
                return fault
        return None

    def add_fault(self, spec: dict[str, Any]) -> str | None:
        kind = spec.get("kind")
        if kind in ("blocked", "chat_not_found") and spec.get("chat_id") is not None:
            (self.blocked if kind == "blocked" else self.missing).add(str(spec["chat_id"]))
            return None
        if kind in ("flood", "server_error"):
            self.call_faults.append(
                CallFault(
                    str(kind),
                    int(spec.get("count", 1)),
                    retry_after=int(spec.get("retry_after", 1)),
                    status=int(spec.get("status", 502)),
                )
            )
            return None
        return f"kind must be one of {FAULT_KINDS} (blocked and chat_not_found need a chat_id)"


# --- Bot API methods -------------------------------------------------------------------------------


def parse_chat_id(value: Any) -> int | str:
    if value is None or str(value).strip() == "":
        raise BotApiError(400, "Bad Request: chat_id is empty")
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text.startswith("@"):
        return text
    raise BotApiError(400, "Bad Request: chat not found")


def chat_of(chat_id: int | str, first_name: str = "Client") -> dict[str, Any]:
    if isinstance(chat_id, str):
        return {"id": -1_000_000_000_000 - len(chat_id), "type": "channel", "username": chat_id[1:]}
    if chat_id < 0:
        return {"id": chat_id, "type": "supergroup", "title": "Sandbox group"}
    return {"id": chat_id, "type": "private", "first_name": first_name}


def _reply_markup(raw: Any) -> dict[str, Any] | None:
    """An InlineKeyboardMarkup: {"inline_keyboard": [[{"text", "callback_data"}, ...], ...]}. A form
    body carries it JSON-serialized, as the Bot API takes it."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise BotApiError(400, "Bad Request: can't parse reply keyboard markup JSON object") from None
    rows = raw.get("inline_keyboard") if isinstance(raw, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise BotApiError(
            400,
            'Bad Request: field "inline_keyboard" of the InlineKeyboardMarkup should be an Array of Arrays',
        )
    for button in (b for row in rows for b in row):
        if not isinstance(button, dict) or not str(button.get("text") or "").strip():
            raise BotApiError(
                400,
                "Bad Request: can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard",
            )
        data = button.get("callback_data")
        if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA:
            raise BotApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return {"inline_keyboard": rows}


def send_message(bot: Bot, params: dict[str, Any]) -> Any:
    chat_id = parse_chat_id(params.get("chat_id"))
    text = str(params.get("text") or "")
    if not text.strip():
        raise BotApiError(400, "Bad Request: message text is empty")
    if len(text) > MAX_TEXT:
        raise BotApiError(400, "Bad Request: message is too long")
    markup = _reply_markup(params.get("reply_markup"))
    if str(chat_id) in bot.missing:
        raise BotApiError(400, "Bad Request: chat not found")
    if str(chat_id) in bot.blocked:
        raise BotApiError(403, "Forbidden: bot was blocked by the user")
    message = {
        "message_id": bot.message_id(chat_id),
        "from": bot.user,
        "chat": chat_of(chat_id),
        "date": int(time.time()),
        "text": text,
    }
    if markup is not None:
        message["reply_markup"] = markup
    bot.sent.append(message)
    return message


def answer_callback_query(bot: Bot, params: dict[str, Any]) -> Any:
    query_id = str(params.get("callback_query_id") or "")
    if query_id not in bot.callback_queries:
        raise BotApiError(
            400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
        )
    bot.answered_callbacks.append(query_id)
    return True


def _int_param(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BotApiError(400, f"Bad Request: invalid {name} specified") from None


def _pending(bot: Bot, offset: int, limit: int) -> list[dict[str, Any]]:
    """Apply `offset` (confirming what it passes) and return up to `limit` pending updates."""
    if offset < 0:
        del bot.updates[: max(0, len(bot.updates) + offset)]  # keep only the last -offset
    elif offset > 0:
        bot.updates[:] = [u for u in bot.updates if u["update_id"] >= offset]
    return bot.updates[:limit]


async def get_updates(bot: Bot, params: dict[str, Any]) -> Any:
    if bot.webhook is not None:
        raise BotApiError(
            409,
            "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
            "the webhook first",
        )
    offset = _int_param(params, "offset", 0)
    limit = min(100, max(1, _int_param(params, "limit", 100)))
    timeout = max(0, _int_param(params, "timeout", 0))
    found = _pending(bot, offset, limit)
    if found or timeout == 0:
        return found
    async with bot.arrived:
        try:
            async with asyncio.timeout(timeout):
                await bot.arrived.wait_for(lambda: bool(_pending(bot, offset, limit)))
        except TimeoutError:
            pass
    return _pending(bot, offset, limit)


def set_webhook(bot: Bot, params: dict[str, Any]) -> Any:
    url = str(params.get("url") or "")
    if not url:
        bot.webhook = None
        return True
    if not url.startswith(("https://", "http://")):
        raise BotApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
    secret = params.get("secret_token")
    if secret is not None and not SECRET_TOKEN.match(str(secret)):
        raise BotApiError(400, "Bad Request: secret token contains unallowed characters")
    if str(params.get("drop_pending_updates", "")).lower() in ("true", "1"):
        bot.updates.clear()
    bot.webhook = Webhook(url, None if secret is None else str(secret))
    return True


def delete_webhook(bot: Bot, params: dict[str, Any]) -> Any:
    if str(params.get("drop_pending_updates", "")).lower() in ("true", "1"):
        bot.updates.clear()
    bot.webhook = None
    return True


def webhook_info(bot: Bot, params: dict[str, Any]) -> Any:
    return {
        "url": bot.webhook.url if bot.webhook else "",
        "has_custom_certificate": False,
        "pending_update_count": len(bot.updates),
    }


Method = Callable[[Bot, dict[str, Any]], Any]
METHODS: dict[str, Method] = {
    "getme": lambda bot, params: bot.user,
    "sendmessage": send_message,
    "answercallbackquery": answer_callback_query,
    "setwebhook": set_webhook,
    "deletewebhook": delete_webhook,
    "getwebhookinfo": webhook_info,
}
ASYNC_METHODS: dict[str, Callable[[Bot, dict[str, Any]], Awaitable[Any]]] = {"getupdates": get_updates}
DESCRIPTIONS = {"setwebhook": "Webhook was set", "deletewebhook": "Webhook was deleted"}


async def request_params(request: Request) -> dict[str, Any]:
    """The four ways the Bot API takes parameters: query string, JSON, urlencoded or multipart form."""
    params: dict[str, Any] = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise BotApiError(400, "Bad Request: can't parse JSON object") from None
        if not isinstance(body, dict):
            raise BotApiError(400, "Bad Request: JSON object expected")
        params.update(body)
    elif content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        params.update({key: value for key, value in form.items() if isinstance(value, str)})
    return params


async def call_method(bot: Bot, token: str, method: str, request: Request) -> Response:
    if token != bot.config.token:
        return BotApiError(401, "Unauthorized").response()
    name = method.lower()
    bot.calls[name] += 1
    fault = bot.take_call_fault()
    if fault is not None and fault.kind == "flood":
        retry = fault.retry_after
        return BotApiError(429, f"Too Many Requests: retry after {retry}", {"retry_after": retry}).response()
    if fault is not None:
        body = f"<html><head><title>{fault.status} Bad Gateway</title></head><body>nginx</body></html>"
        return HTMLResponse(body, status_code=fault.status)
    try:
        params = await request_params(request)
        if name in ASYNC_METHODS:
            result = await ASYNC_METHODS[name](bot, params)
        elif name in METHODS:
            result = METHODS[name](bot, params)
        else:
            raise BotApiError(404, "Not Found")
    except BotApiError as error:
        return error.response()
    answer: dict[str, Any] = {"ok": True, "result": result}
    if name in DESCRIPTIONS:
        answer["description"] = DESCRIPTIONS[name]
    return JSONResponse(answer)


# --- a user writing to the bot ---------------------------------------------------------------------


def _sender(chat_id: int | str, spec: dict[str, Any]) -> dict[str, Any]:
    """The user (a User object) writing from a private chat: its id is the chat's."""
    user: dict[str, Any] = {
        "id": chat_id,
        "is_bot": False,
        "first_name": str(spec.get("first_name") or "Client"),
    }
    for optional in ("username", "language_code"):
        if spec.get(optional):
            user[optional] = str(spec[optional])
    return user


async def incoming(bot: Bot, spec: dict[str, Any]) -> dict[str, Any]:
    """A user's message: an Update, queued for getUpdates or posted to the webhook."""
    chat_id = parse_chat_id(spec.get("chat_id"))
    user = _sender(chat_id, spec)
    bot.blocked.discard(str(chat_id))  # writing to a bot one had blocked unblocks it
    bot.missing.discard(str(chat_id))
    message = {
        "message_id": bot.message_id(chat_id),
        "from": user,
        "chat": chat_of(chat_id, user["first_name"]),
        "date": int(time.time()),
        "text": str(spec.get("text") or ""),
    }
    return await _queue_update(bot, {"message": message})


def _callback_data(message: dict[str, Any]) -> set[str]:
    rows = message.get("reply_markup", {}).get("inline_keyboard", [])
    return {str(b["callback_data"]) for row in rows for b in row if b.get("callback_data") is not None}


async def pressed(bot: Bot, spec: dict[str, Any]) -> dict[str, Any]:
    """The user presses an inline button: a callback_query Update for the bot's latest message in the
    chat that offers a button with this callback_data (a user can only press what they were sent)."""
    chat_id = parse_chat_id(spec.get("chat_id"))
    data = str(spec.get("data") or "")
    offering = [m for m in bot.sent if str(m["chat"]["id"]) == str(chat_id) and data in _callback_data(m)]
    if not offering:
        raise BotApiError(400, f"no message in chat {chat_id} offers a button with callback_data {data!r}")
    query_id = str(4_000_000_000_000_000 + len(bot.callback_queries) + 1)
    query = {
        "id": query_id,
        "from": _sender(chat_id, spec),
        "message": offering[-1],
        "chat_instance": f"sandbox-{chat_id}",  # opaque to the bot
        "data": data,
    }
    bot.callback_queries[query_id] = query
    return await _queue_update(bot, {"callback_query": query})


async def _queue_update(bot: Bot, body: dict[str, Any]) -> dict[str, Any]:
    update = {"update_id": bot.next_update_id, **body}
    bot.next_update_id += 1
    bot.updates.append(update)
    async with bot.arrived:
        bot.arrived.notify_all()
    delivered = await deliver(bot, update) if bot.webhook else None
    return {"update": update, "webhook_status": delivered}


async def deliver(bot: Bot, update: dict[str, Any]) -> int | None:
    """POST the update to the webhook, as Telegram does; a 2xx answer confirms it. One attempt
    (Telegram retries for a while; a test that needs that injects the update again)."""
    assert bot.webhook is not None
    headers = {}
    if bot.webhook.secret_token is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = bot.webhook.secret_token
    try:
        async with httpx.AsyncClient(timeout=30, verify=tls_context()) as client:
            response = await client.post(bot.webhook.url, json=update, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("webhook delivery of update %s failed: %r", update["update_id"], exc)
        return None
    if response.is_success and update in bot.updates:
        bot.updates.remove(update)
    return response.status_code


# --- the app ---------------------------------------------------------------------------------------


def create_telegram_sandbox_app(config: TelegramSandboxConfig | None = None) -> FastAPI:
    bot = Bot(config or TelegramSandboxConfig())
    app = FastAPI(title="Telegram Bot API sandbox")
    app.state.bot = bot

    @app.api_route("/bot{token}/{method}", methods=["GET", "POST"])
    async def bot_api(token: str, method: str, request: Request) -> Response:
        return await call_method(bot, token, method, request)

    install_control(app, bot)
    return app


def install_control(app: FastAPI, bot: Bot) -> None:
    @app.get("/_sandbox/messages")
    async def messages(chat_id: str | None = None) -> dict[str, Any]:
        found = [m for m in bot.sent if chat_id is None or str(m["chat"]["id"]) == chat_id]
        return {"messages": found}

    @app.get("/_sandbox/stats")
    async def stats() -> dict[str, Any]:
        return {"calls": dict(bot.calls)}

    @app.post("/_sandbox/updates")
    async def inject_update(request: Request) -> Response:
        try:
            return JSONResponse(await incoming(bot, await request.json()))
        except BotApiError as error:
            return JSONResponse({"error": error.description}, status_code=400)

    @app.post("/_sandbox/callbacks")
    async def press_button(request: Request) -> Response:
        try:
            return JSONResponse(await pressed(bot, await request.json()))
        except BotApiError as error:
            return JSONResponse({"error": error.description}, status_code=400)

    @app.get("/_sandbox/callback_answers")
    async def callback_answers() -> dict[str, Any]:
        return {"answered": list(bot.answered_callbacks)}

    @app.post("/_sandbox/faults")
    async def add_fault(request: Request) -> JSONResponse:
        problem = bot.add_fault(await request.json())
        if problem:
            return JSONResponse({"error": problem}, status_code=400)
        return JSONResponse({"ok": True})

    @app.delete("/_sandbox/faults")
    async def clear_faults() -> dict[str, Any]:
        bot.clear_faults()
        return {"ok": True}

    @app.post("/_sandbox/reset")
    async def reset() -> dict[str, Any]:
        bot.reset()
        return {"ok": True}


def run_sandbox(port: int, host: str = "127.0.0.1", token: str | None = None) -> None:
    """Serve the sandbox with uvicorn; point a TelegramChannel's base_url at it."""
    import uvicorn

    config = TelegramSandboxConfig(token=token) if token else TelegramSandboxConfig()
    print(f"Telegram Bot API sandbox on http://{host}:{port} (token {config.token})")
    uvicorn.run(create_telegram_sandbox_app(config), host=host, port=port, log_level="info")
