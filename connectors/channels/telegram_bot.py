"""The Bot API pieces a bot that talks back needs beyond TelegramChannel: an inline keyboard on a
message, answering a button press, and reading an Update (core.telegram.org/bots/api: sendMessage
`reply_markup` InlineKeyboardMarkup, answerCallbackQuery, Update/Message/CallbackQuery).

app/bot holds the conversation; everything here is the Bot API's wire format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.channels.base import Receipt
from connectors.channels.telegram import TelegramChannel, chat_id_value

MAX_CALLBACK_DATA = 64  # bytes of an InlineKeyboardButton's callback_data


@dataclass(frozen=True)
class KeyboardButton:
    label: str
    data: str  # callback_data: what the press sends back


@dataclass(frozen=True)
class Incoming:
    """What a user did, from one Update: wrote `text`, or pressed a button sending `data`
    (`callback_id` set, to be answered)."""

    update_id: int
    chat_id: str
    text: str
    first_name: str = ""
    last_name: str = ""
    username: str | None = None
    language_code: str | None = None
    callback_id: str | None = None

    @property
    def display_name(self) -> str:
        """The person's name as Telegram gives it, else @username, else the chat id."""
        name = " ".join(p for p in (self.first_name, self.last_name) if p).strip()
        if name:
            return f"{name} (@{self.username})" if self.username else name
        return f"@{self.username}" if self.username else self.chat_id


class TelegramBot(TelegramChannel):
    """A TelegramChannel that also sends questions with inline buttons and answers presses."""

    async def send_buttons(self, chat_id: str, text: str, buttons: Sequence[KeyboardButton]) -> Receipt:
        """sendMessage with one button per row (option names are sentences, not single words)."""
        payload: dict[str, Any] = {"chat_id": chat_id_value(chat_id), "text": text}
        if buttons:
            rows = [[{"text": b.label, "callback_data": b.data}] for b in buttons]
            payload["reply_markup"] = {"inline_keyboard": rows}
        result = await self._call("sendMessage", payload, idempotent=False)
        return Receipt(provider_id=str(result["message_id"]))

    async def answer_callback(self, callback_id: str) -> None:
        """Stops the button's loading spinner in the user's app; the reply comes as a message."""
        await self._call("answerCallbackQuery", {"callback_query_id": callback_id}, idempotent=True)


def parse_update(update: Mapping[str, Any]) -> Incoming | None:
    """The private-chat message or button press in an Update; None for anything else (edits,
    channel posts, group messages, other update kinds), which a qualification bot ignores."""
    update_id = update.get("update_id")
    if not isinstance(update_id, int):
        return None
    query = update.get("callback_query")
    if isinstance(query, Mapping):
        message = query.get("message")
        if not isinstance(message, Mapping) or not isinstance(query.get("data"), str):
            return None
        return _incoming(update_id, message, query.get("from"), str(query["data"]), str(query.get("id")))
    message = update.get("message")
    if isinstance(message, Mapping) and isinstance(message.get("text"), str):
        return _incoming(update_id, message, message.get("from"), str(message["text"]), None)
    return None


def _incoming(
    update_id: int, message: Mapping[str, Any], sender: Any, text: str, callback_id: str | None
) -> Incoming | None:
    chat = message.get("chat")
    if not isinstance(chat, Mapping) or chat.get("type") != "private" or chat.get("id") is None:
        return None
    user: Mapping[str, Any] = sender if isinstance(sender, Mapping) else {}
    return Incoming(
        update_id=update_id,
        chat_id=str(chat["id"]),
        text=text,
        first_name=str(user.get("first_name") or ""),
        last_name=str(user.get("last_name") or ""),
        username=str(user["username"]) if user.get("username") else None,
        language_code=str(user["language_code"]) if user.get("language_code") else None,
        callback_id=callback_id,
    )
