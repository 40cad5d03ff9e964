"""WhatsApp Cloud API: notifications by webhook, replies by ``/{phone_number_id}/messages``.

Meta signs each notification: ``X-Hub-Signature-256`` is ``sha256=`` and the hex
HMAC-SHA256 of the raw body under the app secret. Registering the webhook is a ``GET``
with ``hub.mode=subscribe``, ``hub.verify_token`` (the endpoint's) and ``hub.challenge``,
echoed back. A notification not answered ``200`` is redelivered for days; each message
carries its ``wamid``, the same on every redelivery. Delivery statuses, reactions and
messages to the app's other numbers are acknowledged and dropped.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from shared.channels.platform import (
    Answer,
    Call,
    ChannelName,
    Credentials,
    Incoming,
    Message,
    Parsed,
    Refused,
    Result,
    Route,
    by_status,
    json_object,
    json_or_empty,
    unix_seconds,
)

# Graph API error codes that mean "later": throttling, the per-user pair rate, a
# temporary outage.
RETRYABLE_CODES = frozenset({1, 2, 4, 17, 80007, 130429, 131000, 131016, 131048, 131056})
SILENT_TYPES = frozenset({"reaction", "system", "unsupported", "request_welcome"})


class WhatsApp:
    name: ChannelName = "whatsapp"
    required: tuple[str, ...] = ("access_token", "app_secret", "phone_number_id")
    generated: tuple[str, ...] = ("verify_token",)
    public: tuple[str, ...] = ("phone_number_id",)
    max_chars: int = 4096
    chat_interval_s: float = 1.0
    per_second: int = 80  # Cloud API: 80 messages a second per business number
    api_base: str = "https://graph.facebook.com/v21.0"

    def verify(self, endpoint: Credentials, request: Incoming, now_s: float) -> None:
        given = request.headers.get("x-hub-signature-256", "")
        secret = endpoint.credentials["app_secret"].encode()
        expected = "sha256=" + hmac.new(secret, request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Refused("X-Hub-Signature-256 is missing or does not match")

    def handshake(self, endpoint: Credentials, request: Incoming) -> Answer:
        query = request.query
        token = query.get("hub.verify_token", "")
        if query.get("hub.mode") != "subscribe" or not hmac.compare_digest(
            token.encode(), endpoint.credentials["verify_token"].encode()
        ):
            raise Refused("hub.mode must be subscribe and hub.verify_token the endpoint's", 403)
        return Answer(query.get("hub.challenge", "").encode())

    def parse(self, endpoint: Credentials, request: Incoming) -> Parsed:
        doc = json_object(request.body)
        own = endpoint.credentials["phone_number_id"]
        found: list[Message] = []
        for value in _values(doc):
            metadata = value.get("metadata")
            if not isinstance(metadata, dict) or str(metadata.get("phone_number_id")) != own:
                continue
            for message in value.get("messages") or []:
                if not isinstance(message, dict) or "from" not in message or "id" not in message:
                    continue
                kind = message.get("type")
                if kind in SILENT_TYPES:
                    continue
                body = message.get("text") if kind == "text" else None
                text = body.get("body") if isinstance(body, dict) else None
                found.append(
                    Message(
                        chat=str(message["from"]),
                        id=str(message["id"]),
                        text=text if isinstance(text, str) and text else None,
                        sent_at=unix_seconds(message.get("timestamp")),
                    )
                )
        return Parsed(tuple(found))

    def call(self, endpoint: Credentials, route: Route, text: str) -> Call:
        base = (endpoint.api_base or self.api_base).rstrip("/")
        number = endpoint.credentials["phone_number_id"]
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": route.chat,
            "type": "text",
            "text": {"body": text, "preview_url": False},
        }
        headers = {"authorization": f"Bearer {endpoint.credentials['access_token']}"}
        return Call(f"{base}/{number}/messages", headers, json=body)

    def result(self, status: int, headers: Mapping[str, str], body: bytes) -> Result:
        if 200 <= status < 300:
            return Result(True)
        error = json_or_empty(body).get("error")
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message") or "")[:300]
        if status != 429 and error.get("code") in RETRYABLE_CODES:
            return Result(False, error=message)
        return by_status(status, headers, message)


def _values(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``value`` of every ``messages`` change in a notification."""
    if doc.get("object") != "whatsapp_business_account":
        return []
    values = []
    for entry in doc.get("entry") or []:
        for change in (entry or {}).get("changes") or [] if isinstance(entry, dict) else []:
            if isinstance(change, dict) and change.get("field") == "messages":
                value = change.get("value")
                if isinstance(value, dict):
                    values.append(value)
    return values
