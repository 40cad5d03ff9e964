"""Refuse, before any route runs, requests that two parsers could read two ways, that a
web page could send cross-origin without asking, or that cost more than they weigh.

Checked in this order, each refusal a problem and none of them touching Redis:

- the target: absolute- or authority-form (``GET http://host/…``) is a 400; a path
  segment made only of dots (``.``, ``..``, ``%2e%2e``: clients remove such segments, so
  no id may be one) is a 422; a repeated query parameter is a 400;
- the head: a repeated single-valued header (``SINGLE_VALUED``) is a 400; a
  ``Content-Encoding`` other than identity a 415 (bodies are never decoded); an
  ``Expect`` other than ``100-continue`` a 417;
- the body, when there is one: over ``max_bytes`` a 413 (a declared length before a byte
  is read); not labelled ``application/json`` (or ``application/*+json``, UTF-8) a 415,
  so no form or ``text/plain`` "simple request" from another origin can write; not
  complete within ``body_timeout_s`` a 408; then ``api.strict_json`` reads it once. A
  messaging channel's webhook may also take a form (``is_form``).

A client that hangs up while its body is read is answered 499 (nobody receives it; the
metrics count it apart from server errors) and nothing is logged.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.limits import read_body, too_large
from api.problems import CLIENT_CLOSED, Refusal, problem
from api.strict_json import check_json

# Fields whose value is one item (RFC 9110 §5.3): a second line, or the same name spelt
# with "_" (which some proxies read as "-"), could be read in its place by another parser.
# List-valued fields (Accept, Cache-Control, …) may repeat; Authorization and X-API-Key
# are judged where keys are read (api/auth.py).
SINGLE_VALUED = frozenset(
    {
        b"host",
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"transfer-encoding",
        b"expect",
        b"idempotency-key",
        b"last-event-id",
        b"origin",
        b"access-control-request-method",
    }
)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CHANNEL_WEBHOOK = re.compile(r"/v1/channels/[a-z]+/ch_[0-9a-f]{16}/webhook")


class RequestGuards:
    """ASGI middleware; see the module docstring for what it refuses."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body: bytes | None = None
        try:
            check_target(scope)
            declared, chunked = check_head(scope)
            if declared or chunked:
                body = await self._body(scope, receive, declared)
        except Refusal as refusal:
            if body is None and _declares_body(scope):  # unread: close, never guess framing
                refusal.headers.setdefault("Connection", "close")
            await refusal.response()(scope, receive, send)
            return
        except ClientDisconnect:
            await problem(CLIENT_CLOSED, "Client closed request", kind="client-closed")(
                scope, receive, send
            )
            return
        if body is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _body(self, scope: Scope, receive: Receive, declared: int | None) -> bytes:
        if declared is not None:
            if declared > self.max_bytes:
                raise too_large(self.max_bytes)
            check_json_type(scope)
        body = await read_body(receive, max_bytes=self.max_bytes, timeout_s=self.body_timeout_s)
        if declared is None and body:
            check_json_type(scope)
        if body and not is_form(scope):
            check_json(body)
        return body


def check_target(scope: Scope) -> None:
    path: str = scope["path"]
    if not path.startswith("/"):
        raise Refusal(
            400,
            "Unsupported request target",
            "Only origin-form targets (a path starting with /) are served.",
            kind="unsupported-target",
        )
    if any(segment and segment.strip(".") == "" for segment in path.split("/")):
        raise Refusal(
            422,
            "Invalid request",
            "A path segment is made only of dots; no id may be one.",
            kind="invalid-request",
            errors=[{"loc": ["path"], "msg": "segment made only of dots", "type": "dot_segment"}],
        )
    query: bytes = scope.get("query_string", b"")
    seen: set[str] = set()
    for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            raise Refusal(
                400,
                "Repeated query parameter",
                f"Query parameter {_quoted(name)}is given more than once.",
                kind="repeated-query-parameter",
            )
        seen.add(name)


def check_head(scope: Scope) -> tuple[int | None, bool]:
    """The declared body length (None when not declared) and whether the body is chunked;
    raises ``Refusal`` for the head's own faults."""
    seen: set[bytes] = set()
    declared: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        field = name.replace(b"_", b"-")  # a proxy may read Content_Type as Content-Type
        if field in SINGLE_VALUED:
            if field in seen:
                raise Refusal(
                    400,
                    "Repeated header",
                    f"The {field.decode()} header is given more than once.",
                    kind="repeated-header",
                )
            seen.add(field)
        if name == b"content-length":
            if not value.strip().isdigit():
                raise Refusal(400, "Bad Content-Length", "Not a length.", kind="bad-framing")
            declared = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            raise Refusal(
                415,
                "Unsupported Content-Encoding",
                "Request bodies are read as sent: send them without a Content-Encoding.",
                kind="unsupported-content-encoding",
            )
        elif name == b"expect" and value.strip().lower() != b"100-continue":
            raise Refusal(
                417,
                "Expectation failed",
                "The only expectation met is 100-continue.",
                kind="expectation-failed",
            )
    if declared is not None and chunked:
        raise Refusal(
            400,
            "Ambiguous framing",
            "A request has a Content-Length or a Transfer-Encoding, not both.",
            kind="bad-framing",
        )
    return declared or None, chunked


def check_json_type(scope: Scope) -> None:
    for name, value in scope["headers"]:
        if name == b"content-type" and is_json(value.decode("latin-1")):
            return
    if is_form(scope):
        return
    raise Refusal(
        415,
        "Unsupported media type",
        "Request bodies are JSON: send them with Content-Type: application/json.",
        kind="unsupported-media-type",
    )


def is_form(scope: Scope) -> bool:
    """A form body sent to a messaging channel's webhook (Twilio posts forms): nothing
    there is written unless the platform's signature over it checks out, so no page of
    another origin can use the exception."""
    if not CHANNEL_WEBHOOK.fullmatch(scope["path"]):
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            media: str = value.decode("latin-1").split(";")[0].strip().lower()
            return media == "application/x-www-form-urlencoded"
    return False


def is_json(content_type: str) -> bool:
    """``application/json`` or ``application/<x>+json``, in UTF-8 if a charset is named."""
    media, *params = content_type.split(";")
    kind, _, subtype = media.strip().lower().partition("/")
    if kind != "application" or not (subtype == "json" or re.fullmatch(r"[^+]+\+json", subtype)):
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip(' "').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _declares_body(scope: Scope) -> bool:
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" 0"))
        for name, value in scope["headers"]
    )


def _quoted(name: str) -> str:
    return f"{name} " if _NAME.fullmatch(name) else ""


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the real ``receive`` (which reports the disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
