"""What each platform module provides, and the shapes they share.

A platform module is stateless: it verifies and parses the platform's webhook requests
(``verify``, ``parse``, ``handshake``), and builds and judges the calls that send a
reply through the platform's API (``call``, ``result``). Credentials come from the
channel endpoint; no I/O happens here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from shared.retry_after import retry_after_s

ChannelName = Literal["telegram", "slack", "whatsapp", "twilio"]
CHANNELS: tuple[ChannelName, ...] = ("telegram", "slack", "whatsapp", "twilio")


class Refused(Exception):
    """The request is not the platform's (no or a wrong signature, a stale timestamp):
    answered 401 (or ``status``), and nothing is written."""

    def __init__(self, detail: str, status: int = 401) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class Malformed(Exception):
    """A verified request whose body is not what the platform sends: answered 400."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A webhook request as it arrived."""

    url: str  # the full URL the platform called (Twilio signs it)
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """One message a user sent the bot."""

    chat: str  # where the reply goes: a Telegram chat, a Slack channel, a phone number
    id: str  # the platform's id for it; every redelivery carries the same
    text: str | None  # None: nothing a bot can answer (media, a sticker, a file)
    thread: str | None = None  # a Slack thread, a Telegram forum topic
    via: str | None = None  # the bot's own address it was sent to (Twilio: the number)
    sent_at: float | None = None  # Unix seconds, as the platform says (Twilio says not)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the platform's webhook request is answered."""

    body: bytes = b""
    media_type: str = "text/plain"


@dataclass(frozen=True, slots=True)
class Parsed:
    messages: tuple[Message, ...] = ()
    answer: Answer = field(default_factory=Answer)


REPLY_ID_HEADER = "x-chatlane-reply-id"
"""Sent with every call that delivers a reply, the same on each attempt of one reply: on
the platform's side (a proxy, a log, a test's fake) a resend tells itself apart from a
second reply. The platforms ignore it."""


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request to a platform's API: a JSON body, or a form."""

    url: str
    headers: dict[str, str]
    json: dict[str, Any] | None = None
    form: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """How a platform answered a send."""

    ok: bool
    retry_after_s: float | None = None  # the platform asked to wait this long (429)
    permanent: bool = False  # trying again cannot help (a bad token, a chat that is gone)
    error: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one reply goes: the endpoint's bot, and the chat (thread, own address)."""

    chat: str
    thread: str | None = None
    via: str | None = None


class Credentials(Protocol):
    """The parts of a channel endpoint a platform module reads."""

    @property
    def credentials(self) -> dict[str, str]: ...

    @property
    def api_base(self) -> str | None: ...

    @property
    def public_url(self) -> str | None: ...


class Platform(Protocol):
    name: ChannelName
    required: tuple[str, ...]  # credentials an endpoint must be given
    generated: tuple[str, ...]  # credentials made when not given (shown once)
    public: tuple[str, ...]  # credentials that are not secret (shown in full)
    max_chars: int  # a message's length limit (UTF-16 code units): longer replies split
    chat_interval_s: float  # the least time between two messages to one chat
    per_second: int  # the most messages a bot sends per second, unless its endpoint says
    api_base: str  # the platform's API, unless the endpoint names another

    def verify(self, endpoint: Credentials, request: Incoming, now_s: float) -> None: ...

    def parse(self, endpoint: Credentials, request: Incoming) -> Parsed: ...

    def handshake(self, endpoint: Credentials, request: Incoming) -> Answer: ...

    def call(self, endpoint: Credentials, route: Route, text: str) -> Call: ...

    def result(self, status: int, headers: Mapping[str, str], body: bytes) -> Result: ...


def unix_seconds(value: object) -> float | None:
    """A platform's timestamp (a number, or digits in a string) as Unix seconds."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    return None


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``Malformed``."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed("the body is not JSON") from exc
    if not isinstance(doc, dict):
        raise Malformed("the body is not a JSON object")
    return doc


def json_or_empty(body: bytes) -> dict[str, Any]:
    """A platform's answer as a JSON object; ``{}`` when it is anything else."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def by_status(status: int, headers: Mapping[str, str], error: str) -> Result:
    """The common judgement of a failed send: 429 waits as asked, 408 and 5xx are tried
    again, any other answer is permanent."""
    if status == 429:
        return Result(False, retry_after_s(headers) or 1.0, error=error or "throttled (429)")
    if status == 408 or status >= 500 or status == 0:
        return Result(False, error=error or f"answered {status}")
    return Result(False, permanent=True, error=error or f"answered {status}")


class NoHandshake:
    """For platforms whose webhook registration asks nothing of the receiver."""

    def handshake(self, endpoint: Credentials, request: Incoming) -> Answer:
        raise Refused("this channel has no verification handshake", status=405)
