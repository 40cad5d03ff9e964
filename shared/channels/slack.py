"""Slack Events API: events by HTTP, replies by ``chat.postMessage`` in the thread.

Slack signs each request: ``X-Slack-Signature`` is ``v0=`` and the hex HMAC-SHA256 of
``v0:{X-Slack-Request-Timestamp}:{body}`` under the app's signing secret; a timestamp more
than five minutes away is refused (a replayed request). Slack retries an event it got no
answer to within 3 s (``X-Slack-Retry-Num``) with the same ``event_id``.

Direct messages to the bot, and mentions of it in channels, become turns; a mention is
answered in a thread under it, and that thread is its own conversation. The bot's own
messages and other message subtypes (edits, joins) are acknowledged and dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from shared.channels.platform import (
    Answer,
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
from shared.retry_after import retry_after_s

MAX_SKEW_S = 300
RETRYABLE = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_MENTION = re.compile(r"^\s*<@[A-Z0-9]+>\s*")


class Slack(NoHandshake):
    name: ChannelName = "slack"
    required: tuple[str, ...] = ("bot_token", "signing_secret")
    generated: tuple[str, ...] = ()
    public: tuple[str, ...] = ()
    max_chars: int = 4000  # Slack truncates at 40,000 and advises keeping a message under 4,000
    chat_interval_s: float = 1.0  # chat.postMessage: about one message a second per channel
    per_second: int = 20
    api_base: str = "https://slack.com/api"

    def verify(self, endpoint: Credentials, request: Incoming, now_s: float) -> None:
        stamp = request.headers.get("x-slack-request-timestamp", "")
        given = request.headers.get("x-slack-signature", "")
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12) or not given:
            raise Refused("X-Slack-Request-Timestamp and X-Slack-Signature are required")
        if abs(now_s - int(stamp)) > MAX_SKEW_S:
            raise Refused("the request's timestamp is more than five minutes away")
        secret = endpoint.credentials["signing_secret"].encode()
        mac = hmac.new(secret, b"v0:" + stamp.encode() + b":" + request.body, hashlib.sha256)
        if not hmac.compare_digest(given.encode(), ("v0=" + mac.hexdigest()).encode()):
            raise Refused("X-Slack-Signature does not match")

    def parse(self, endpoint: Credentials, request: Incoming) -> Parsed:
        doc = json_object(request.body)
        if doc.get("type") == "url_verification":
            return Parsed(answer=Answer(str(doc.get("challenge", "")).encode()))
        event = doc.get("event")
        event_id = doc.get("event_id")
        if doc.get("type") != "event_callback" or not isinstance(event, dict):
            return Parsed()
        if not isinstance(event_id, str) or event.get("bot_id") or "channel" not in event:
            return Parsed()
        subtype = event.get("subtype")
        if subtype is not None and subtype != "file_share":
            return Parsed()  # edits, deletions, joins, other bots
        text = event.get("text")
        text = text if isinstance(text, str) and text.strip() else None
        channel = str(event["channel"])
        if event.get("type") == "app_mention":
            thread = str(event.get("thread_ts") or event.get("ts") or "") or None
            text = _MENTION.sub("", text) if text is not None else None
        elif event.get("type") == "message" and event.get("channel_type") == "im":
            thread = str(event["thread_ts"]) if event.get("thread_ts") else None
        else:
            return Parsed()  # channel chatter: the bot answers mentions only
        if subtype == "file_share":
            text = None
        sent_at = unix_seconds(doc.get("event_time"))
        message = Message(channel, event_id, text or None, thread=thread, sent_at=sent_at)
        return Parsed((message,))

    def call(self, endpoint: Credentials, route: Route, text: str) -> Call:
        base = (endpoint.api_base or self.api_base).rstrip("/")
        body: dict[str, object] = {"channel": route.chat, "text": text}
        if route.thread is not None:
            body["thread_ts"] = route.thread
        headers = {"authorization": f"Bearer {endpoint.credentials['bot_token']}"}
        return Call(f"{base}/chat.postMessage", headers, json=body)

    def result(self, status: int, headers: Mapping[str, str], body: bytes) -> Result:
        doc = json_or_empty(body)
        if 200 <= status < 300 and doc.get("ok") is True:
            return Result(True)
        error = str(doc.get("error") or "")[:300]
        if status == 200 and error:
            if error == "ratelimited":
                return Result(False, retry_after_s(headers) or 1.0, error=error)
            return Result(False, permanent=error not in RETRYABLE, error=error)
        return by_status(status, headers, error)
