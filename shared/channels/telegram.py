"""Telegram Bot API: updates by webhook, replies by ``sendMessage``.

Telegram proves an update is its own by echoing the ``secret_token`` given to
``setWebhook`` in ``X-Telegram-Bot-Api-Secret-Token``. Updates arrive over up to 40
connections at once and carry ``update_id``, the same on every redelivery.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from shared.channels.platform import (
    Call,
    ChannelName,
    Credentials,
    Incoming,
    Message,
    NoHandshake,
    Parsed,
    Refused,
    Result,
    Route,
    by_status,
    json_object,
    json_or_empty,
    unix_seconds,
)
from shared.retry_after import wait_s

SECRET_HEADER = "x-telegram-bot-api-secret-token"


class Telegram(NoHandshake):
    name: ChannelName = "telegram"
    required: tuple[str, ...] = ("bot_token",)
    generated: tuple[str, ...] = ("secret_token",)
    public: tuple[str, ...] = ()
    max_chars: int = 4096
    chat_interval_s: float = 1.0  # Telegram: about one message a second to one chat
    per_second: int = 30  # and 30 a second across chats
    api_base: str = "https://api.telegram.org"

    def verify(self, endpoint: Credentials, request: Incoming, now_s: float) -> None:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), endpoint.credentials["secret_token"].encode()):
            raise Refused(f"{SECRET_HEADER} is missing or wrong")

    def parse(self, endpoint: Credentials, request: Incoming) -> Parsed:
        update = json_object(request.body)
        message = update.get("message")
        update_id = update.get("update_id")
        if not isinstance(message, dict) or not isinstance(update_id, int):
            return Parsed()  # edits, channel posts, button presses, member changes
        chat = message.get("chat")
        sender = message.get("from")
        if not isinstance(chat, dict) or "id" not in chat:
            return Parsed()
        if isinstance(sender, dict) and sender.get("is_bot"):
            return Parsed()
        text = message.get("text")
        topic = message.get("message_thread_id") if message.get("is_topic_message") else None
        return Parsed(
            (
                Message(
                    chat=str(chat["id"]),
                    id=str(update_id),
                    text=text if isinstance(text, str) else None,
                    thread=str(topic) if topic is not None else None,
                    sent_at=unix_seconds(message.get("date")),
                ),
            )
        )

    def call(self, endpoint: Credentials, route: Route, text: str) -> Call:
        base = (endpoint.api_base or self.api_base).rstrip("/")
        chat: int | str = int(route.chat) if route.chat.lstrip("-").isdigit() else route.chat
        body: dict[str, object] = {"chat_id": chat, "text": text}
        if route.thread is not None:
            body["message_thread_id"] = int(route.thread)
        return Call(f"{base}/bot{endpoint.credentials['bot_token']}/sendMessage", {}, json=body)

    def result(self, status: int, headers: Mapping[str, str], body: bytes) -> Result:
        doc = json_or_empty(body)
        if 200 <= status < 300 and doc.get("ok") is True:
            return Result(True)
        error = str(doc.get("description") or "")[:300]
        if status == 429:
            parameters = doc.get("parameters")
            wait = wait_s(parameters.get("retry_after")) if isinstance(parameters, dict) else None
            if wait is not None:
                return Result(False, wait, error=error)
        return by_status(status, headers, error)
