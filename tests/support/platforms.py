"""A loopback fake of the messaging platforms' send APIs: Telegram, Slack, Twilio, WhatsApp Cloud.

One aiohttp server answers all four, each under the path its real API uses below the
configurable API base (``base_url``):

- Telegram: ``POST /bot{token}/sendMessage``
- Slack: ``POST /api/chat.postMessage``
- Twilio: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``
- WhatsApp Cloud: ``POST /{phone_number_id}/messages`` (also ``/v{major}.{minor}/...``, so a
  Graph base URL with a version in it works unchanged)

It checks credentials (only those in ``telegram_tokens``, ``slack_tokens``,
``twilio_accounts`` and ``whatsapp_tokens`` are accepted), answers with each platform's own
status codes and error bodies, records every accepted send as a `Sent` and every request as an
`Attempt`, and can be told to fail: `PlatformsFake.down` (503, or connections refused),
`PlatformsFake.throttle` (429 with the platform's retry-after), `PlatformsFake.up`.

The fault switches and the readers are safe to call from any thread, so a synchronous test can
drive the fake that `PlatformsThread` runs on its own event loop while worker processes send
to it over HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import secrets
import socket
import threading
import time
from base64 import b64decode
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web

from shared.channels.platform import REPLY_ID_HEADER
from tests.support.loop_thread import LoopThread

Platform = Literal["telegram", "slack", "twilio", "whatsapp"]
PLATFORMS: tuple[Platform, ...] = ("telegram", "slack", "twilio", "whatsapp")

# The credentials a new fake accepts unless told otherwise.
TELEGRAM_TOKEN = "123456789:AAFakeTelegramBotTokenForTests000000"
SLACK_BOT_TOKEN = "xoxb-100000000001-200000000002-FakeSlackBotTokenForTests"
TWILIO_ACCOUNT_SID = "AC00000000000000000000000000000001"
TWILIO_AUTH_TOKEN = "f00dfeedf00dfeedf00dfeedf00dfeed"
TWILIO_SMS_NUMBER = "+15005550006"
TWILIO_WHATSAPP_NUMBER = "whatsapp:+14155238886"
WHATSAPP_TOKEN = "EAAFakeWhatsAppCloudAccessTokenForTests"
WHATSAPP_PHONE_NUMBER_ID = "106540352242922"

# The longest text each platform takes in one message (Telegram counts UTF-16 code units and
# Twilio GSM-7/UCS-2 segments; the fake counts characters, which agrees for plain ASCII).
MAX_TEXT: dict[Platform, int] = {
    "telegram": 4096,
    "slack": 40000,
    "twilio": 1600,
    "whatsapp": 4096,
}

T = TypeVar("T")


@dataclass(frozen=True)
class Sent:
    """One send the fake accepted.

    ``chat`` is the Telegram ``chat_id`` (as a string), the Slack ``channel``, the Twilio
    ``To`` or the WhatsApp ``to``. ``thread`` is the Telegram ``message_thread_id`` (as a
    string) or the Slack ``thread_ts``, else None. ``sender`` is the Twilio ``From`` (or
    ``MessagingServiceSid``), the WhatsApp ``phone_number_id``, or the Telegram/Slack token.
    ``message_id`` is what the answer named it: Telegram ``message_id`` (as a string), Slack
    ``ts``, Twilio ``sid``, WhatsApp ``wamid``. ``payload`` is the request as parsed (JSON
    object or form fields), for fields this record does not lift out. ``at`` is
    ``time.monotonic()`` when it was accepted.
    """

    platform: Platform
    chat: str
    thread: str | None
    text: str
    sender: str
    at: float
    message_id: str = ""
    payload: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    reply_id: str = ""  # chatlane's id of the reply (a resend of one reply keeps it)


@dataclass(frozen=True)
class Attempt:
    """One request the fake received, accepted or not, and how it answered.

    ``outcome`` is ``"sent"``, ``"unauthorized"``, ``"throttled"``, ``"down"``,
    ``"bad_request"`` or ``"not_found"``; ``status`` is the HTTP status it answered with (Slack
    answers a bad token with 200, so ``outcome`` is the one to test for refusals).
    """

    platform: Platform
    path: str
    status: int
    outcome: str
    at: float
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    body: bytes = field(default=b"", compare=False, repr=False)


@dataclass
class _Throttle:
    remaining: int
    retry_after_s: int
    platform: Platform | None


class _Answer(Exception):
    """Raised by a route to answer at once with ``response``, recorded as ``outcome``."""

    def __init__(self, outcome: str, response: web.Response) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.response = response


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class PlatformsFake:
    """The four platforms' send APIs on one loopback port; see the module docstring.

    ``async start(port=0)`` binds 127.0.0.1 (a free port unless one is given) on the running
    loop; ``async stop()`` closes it. Everything else may be called from any thread.
    """

    def __init__(self) -> None:
        self.telegram_tokens: set[str] = {TELEGRAM_TOKEN}
        self.slack_tokens: set[str] = {SLACK_BOT_TOKEN}
        self.twilio_accounts: dict[str, str] = {TWILIO_ACCOUNT_SID: TWILIO_AUTH_TOKEN}
        self.whatsapp_tokens: set[str] = {WHATSAPP_TOKEN}
        self.port = 0
        self._lock = threading.Lock()
        self._sent: list[Sent] = []
        self._attempts: list[Attempt] = []
        self._down: set[Platform] = set()
        self._throttles: list[_Throttle] = []
        self._refused = False
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._generation = 0
        self._starting: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        """The API base every platform's client is to be configured with (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    # -- running -------------------------------------------------------------------------

    async def start(self, port: int = 0) -> PlatformsFake:
        app = web.Application()
        app.router.add_post("/bot{token}/sendMessage", self._telegram)
        app.router.add_post("/bot{token}/{method}", self._telegram_unknown)
        app.router.add_post("/api/chat.postMessage", self._slack)
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._twilio)
        app.router.add_post("/{phone_number_id}/messages", self._whatsapp)
        app.router.add_post(r"/{version:v\d+\.\d+}/{phone_number_id}/messages", self._whatsapp)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        sock = self._bind(port)
        self.port = sock.getsockname()[1]
        await self._serve(sock, self._generation)
        return self

    async def stop(self) -> None:
        self._generation += 1
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        self._starting = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(512)
        except OSError:
            sock.close()
            raise
        return sock

    async def _serve(self, sock: socket.socket, generation: int) -> None:
        assert self._runner is not None and self._runner.server is not None
        try:
            server = await asyncio.get_running_loop().create_server(self._runner.server, sock=sock)
        except BaseException:
            sock.close()
            raise
        if generation != self._generation:  # refused (or stopped) again before it served
            server.close()
            return
        self._listener = server

    def _in_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the fake's loop and return its result, whichever thread calls."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(10)

    # -- faults --------------------------------------------------------------------------

    def down(self, refuse: bool = False, platform: Platform | None = None) -> None:
        """Fail every send until `up`: answer ``503`` with the platform's own error body.

        With ``platform``, only that platform's sends fail. With ``refuse``, the listening
        socket closes instead (and open connections with it), so connections are refused as
        if the service were gone; `up` binds the same port again. Refusing takes all four.
        """
        if refuse and platform is not None:
            raise ValueError("one socket serves every platform: refuse takes all of them")
        with self._lock:
            self._down.update(PLATFORMS if platform is None else (platform,))
        if refuse:
            self._in_loop(self._close_listener)

    def _close_listener(self) -> None:
        self._refused = True
        self._generation += 1
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None and self._runner.server is not None:
            for handler in self._runner.server.connections:
                # Shut the socket down now (the transport closes it only at the loop's next
                # turn), so a client's pooled connection is seen as dead before it is reused.
                transport = handler.transport
                sock = None if transport is None else transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                handler.force_close()

    def up(self) -> None:
        """Undo `down` (on every platform), listening again on the same port if it refused.

        Called from another thread it returns once the port serves again; called on the fake's
        own loop it returns with the port bound and listening (connections wait in the backlog)
        and the fake starts answering them at the loop's next turn.
        """
        with self._lock:
            self._down.clear()
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            sock = self._reopening()
            if sock is not None:
                self._starting = loop.create_task(self._serve(sock, self._generation))
        else:
            asyncio.run_coroutine_threadsafe(self._reopen(), loop).result(10)

    async def _reopen(self) -> None:
        sock = self._reopening()
        if sock is not None:
            await self._serve(sock, self._generation)

    def _reopening(self) -> socket.socket | None:
        """The port bound and listening again, if it was refusing (on the fake's loop)."""
        if not self._refused or self._runner is None:
            return None
        sock = self._bind(self.port)
        self._refused = False
        return sock

    def throttle(self, count: int, retry_after_s: int, platform: Platform | None = None) -> None:
        """Answer the next ``count`` sends (of ``platform``, else of any) with ``429``.

        ``retry_after_s`` is whole seconds, as every one of these platforms gives it: in
        Telegram's ``parameters.retry_after`` and description, and in a ``Retry-After`` header
        on all four. A request refused for its credentials or while down does not use one up.
        """
        if count > 0:
            with self._lock:
                self._throttles.append(_Throttle(count, int(retry_after_s), platform))

    def clear(self) -> None:
        """Forget what was sent and attempted (faults stay as they are)."""
        with self._lock:
            self._sent.clear()
            self._attempts.clear()

    # -- reading -------------------------------------------------------------------------

    @property
    def sent(self) -> list[Sent]:
        """A copy of the accepted sends, in the order they were accepted."""
        with self._lock:
            return list(self._sent)

    @property
    def attempts(self) -> list[Attempt]:
        """A copy of every request received (accepted, refused or failed), in order."""
        with self._lock:
            return list(self._attempts)

    def sent_to(self, platform: Platform, chat: str | int) -> list[str]:
        """The texts sent on ``platform`` to ``chat``, in order."""
        chat = str(chat)
        with self._lock:
            return [s.text for s in self._sent if s.platform == platform and s.chat == chat]

    def outcomes(self, platform: Platform | None = None) -> list[str]:
        """The ``outcome`` of every attempt (of ``platform``, else all), in order."""
        with self._lock:
            return [a.outcome for a in self._attempts if platform in (None, a.platform)]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Return once ``predicate()`` holds; fail the test (AssertionError) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "the platforms never saw what was awaited"
            await asyncio.sleep(0.01)

    async def wait_for_texts(
        self, platform: Platform, chat: str | int, count: int, timeout_s: float = 5.0
    ) -> list[str]:
        """Wait until ``chat`` on ``platform`` has at least ``count`` texts; return them all."""
        await self.wait_for(lambda: len(self.sent_to(platform, chat)) >= count, timeout_s)
        return self.sent_to(platform, chat)

    # -- one request ---------------------------------------------------------------------

    async def _handle(
        self,
        platform: Platform,
        request: web.Request,
        authorize: Callable[[], str],
        accept: Callable[[str], tuple[Sent, web.Response]],
    ) -> web.Response:
        """Down, then credentials, then throttling, then the platform's own checks.

        ``authorize`` returns the sender's credential or raises `_Answer`; ``accept`` parses
        the request into what was sent and the answer, or raises `_Answer`.
        """
        body = await request.read()
        sent: Sent | None
        try:
            with self._lock:
                is_down = platform in self._down
            if is_down:
                raise _Answer("down", _down_answer(platform))
            credential = authorize()
            retry_after = self._take_throttle(platform)
            if retry_after is not None:
                raise _Answer("throttled", _throttled_answer(platform, retry_after))
            sent, response = accept(credential)
            outcome = "sent"
        except _Answer as answer:
            sent, response, outcome = None, answer.response, answer.outcome
        attempt = Attempt(
            platform=platform,
            path=request.path,
            status=response.status,
            outcome=outcome,
            at=time.monotonic(),
            headers=dict(request.headers),
            body=body,
        )
        with self._lock:
            self._attempts.append(attempt)
            if sent is not None:
                self._sent.append(sent)
        return response

    def _take_throttle(self, platform: Platform) -> int | None:
        with self._lock:
            for throttle in self._throttles:
                if throttle.platform in (None, platform):
                    throttle.remaining -= 1
                    if throttle.remaining <= 0:
                        self._throttles.remove(throttle)
                    return throttle.retry_after_s
        return None

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    # -- Telegram ------------------------------------------------------------------------

    async def _telegram(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        fields = await _fields(request)

        def authorize() -> str:
            if token not in self.telegram_tokens:
                raise _Answer("unauthorized", _telegram_error(401, "Unauthorized"))
            return token

        def accept(credential: str) -> tuple[Sent, web.Response]:
            chat_id = fields.get("chat_id")
            text = fields.get("text")
            if chat_id in (None, ""):
                raise _Answer("bad_request", _telegram_error(400, "Bad Request: chat_id is empty"))
            if not isinstance(text, str) or not text.strip():
                raise _Answer(
                    "bad_request", _telegram_error(400, "Bad Request: message text is empty")
                )
            if len(text) > MAX_TEXT["telegram"]:
                raise _Answer(
                    "bad_request", _telegram_error(400, "Bad Request: message is too long")
                )
            thread = fields.get("message_thread_id")
            message_id = self._next_id()
            chat = {"id": _int_if_digits(chat_id), "type": "private"}
            result: dict[str, Any] = {
                "message_id": message_id,
                "from": {"id": _int_if_digits(credential.split(":")[0]), "is_bot": True},
                "chat": chat,
                "date": int(time.time()),
                "text": text,
            }
            if thread not in (None, ""):
                result["message_thread_id"] = _int_if_digits(thread)
            sent = Sent(
                reply_id=request.headers.get(REPLY_ID_HEADER, ""),
                platform="telegram",
                chat=str(chat_id),
                thread=None if thread in (None, "") else str(thread),
                text=text,
                sender=credential,
                at=time.monotonic(),
                message_id=str(message_id),
                payload=fields,
            )
            return sent, _json(200, {"ok": True, "result": result})

        return await self._handle("telegram", request, authorize, accept)

    async def _telegram_unknown(self, request: web.Request) -> web.Response:
        response = _telegram_error(404, "Not Found")
        attempt = Attempt(
            "telegram",
            request.path,
            404,
            "not_found",
            time.monotonic(),
            dict(request.headers),
            await request.read(),
        )
        with self._lock:
            self._attempts.append(attempt)
        return response

    # -- Slack ---------------------------------------------------------------------------

    async def _slack(self, request: web.Request) -> web.Response:
        fields = await _fields(request)

        def authorize() -> str:
            token = _bearer(request) or fields.get("token")
            if not token:
                raise _Answer("unauthorized", _json(200, {"ok": False, "error": "not_authed"}))
            if token not in self.slack_tokens:
                raise _Answer("unauthorized", _json(200, {"ok": False, "error": "invalid_auth"}))
            return str(token)

        def accept(credential: str) -> tuple[Sent, web.Response]:
            channel = fields.get("channel")
            text = fields.get("text")
            if not channel:
                raise _Answer(
                    "bad_request", _json(200, {"ok": False, "error": "channel_not_found"})
                )
            if not text and not fields.get("blocks") and not fields.get("attachments"):
                raise _Answer("bad_request", _json(200, {"ok": False, "error": "no_text"}))
            text = str(text or "")
            if len(text) > MAX_TEXT["slack"]:
                raise _Answer("bad_request", _json(200, {"ok": False, "error": "msg_too_long"}))
            thread_ts = fields.get("thread_ts")
            ts = f"{int(time.time())}.{self._next_id():06d}"
            message: dict[str, Any] = {"type": "message", "text": text, "ts": ts}
            if thread_ts:
                message["thread_ts"] = str(thread_ts)
            sent = Sent(
                reply_id=request.headers.get(REPLY_ID_HEADER, ""),
                platform="slack",
                chat=str(channel),
                thread=str(thread_ts) if thread_ts else None,
                text=text,
                sender=credential,
                at=time.monotonic(),
                message_id=ts,
                payload=fields,
            )
            answer = {"ok": True, "channel": channel, "ts": ts, "message": message}
            return sent, _json(200, answer)

        return await self._handle("slack", request, authorize, accept)

    # -- Twilio --------------------------------------------------------------------------

    async def _twilio(self, request: web.Request) -> web.Response:
        account = request.match_info["sid"]
        fields = await _fields(request)

        def authorize() -> str:
            sid, token = _basic(request)
            if sid != account or self.twilio_accounts.get(sid) != token or not token:
                raise _Answer(
                    "unauthorized",
                    _json(
                        401,
                        {
                            "code": 20003,
                            "message": "Authenticate",
                            "more_info": "https://www.twilio.com/docs/errors/20003",
                            "status": 401,
                        },
                    ),
                )
            return sid

        def accept(_credential: str) -> tuple[Sent, web.Response]:
            to = str(fields.get("To") or "")
            sender = str(fields.get("From") or fields.get("MessagingServiceSid") or "")
            body = str(fields.get("Body") or "")
            if not to:
                raise _Answer(
                    "bad_request", _twilio_error(21604, "A 'To' phone number is required.")
                )
            if not sender:
                raise _Answer(
                    "bad_request",
                    _twilio_error(21603, "A 'From' or 'MessagingServiceSid' parameter is required"),
                )
            if not body and not fields.get("MediaUrl"):
                raise _Answer("bad_request", _twilio_error(21602, "Message body is required."))
            if len(body) > MAX_TEXT["twilio"]:
                raise _Answer(
                    "bad_request",
                    _twilio_error(
                        21617, "The concatenated message body exceeds the 1600 character limit."
                    ),
                )
            if fields.get("From") and to.startswith("whatsapp:") != sender.startswith("whatsapp:"):
                raise _Answer(
                    "bad_request",
                    _twilio_error(
                        21910,
                        "Invalid From and To pair. From and To should be of the same channel",
                    ),
                )
            sid = "SM" + secrets.token_hex(16)
            now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
            answer = {
                "sid": sid,
                "account_sid": account,
                "status": "queued",
                "to": to,
                "from": fields.get("From"),
                "messaging_service_sid": fields.get("MessagingServiceSid"),
                "body": body,
                "direction": "outbound-api",
                "num_segments": "1",
                "num_media": "0",
                "date_created": now,
                "date_updated": now,
                "date_sent": None,
                "error_code": None,
                "error_message": None,
                "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
            }
            sent = Sent(
                reply_id=request.headers.get(REPLY_ID_HEADER, ""),
                platform="twilio",
                chat=to,
                thread=None,
                text=body,
                sender=sender,
                at=time.monotonic(),
                message_id=sid,
                payload=fields,
            )
            return sent, _json(201, answer)

        return await self._handle("twilio", request, authorize, accept)

    # -- WhatsApp Cloud ------------------------------------------------------------------

    async def _whatsapp(self, request: web.Request) -> web.Response:
        phone_number_id = request.match_info["phone_number_id"]
        fields = await _fields(request)

        def authorize() -> str:
            token = _bearer(request)
            if token is None or token not in self.whatsapp_tokens:
                raise _Answer(
                    "unauthorized",
                    _whatsapp_error(401, "Invalid OAuth access token.", 190),
                )
            return phone_number_id

        def accept(credential: str) -> tuple[Sent, web.Response]:
            if fields.get("messaging_product") != "whatsapp":
                raise _Answer(
                    "bad_request",
                    _whatsapp_error(
                        400, "(#100) The parameter messaging_product is required.", 100
                    ),
                )
            to = fields.get("to")
            if not isinstance(to, str) or not to:
                raise _Answer(
                    "bad_request", _whatsapp_error(400, "(#100) The parameter to is required.", 100)
                )
            if fields.get("type", "text") != "text":
                raise _Answer(
                    "bad_request",
                    _whatsapp_error(400, "(#100) This fake sends only messages of type text", 100),
                )
            text = fields.get("text")
            body = text.get("body") if isinstance(text, dict) else None
            if not isinstance(body, str) or not body:
                raise _Answer(
                    "bad_request",
                    _whatsapp_error(400, "(#100) The parameter text['body'] is required.", 100),
                )
            if len(body) > MAX_TEXT["whatsapp"]:
                raise _Answer(
                    "bad_request",
                    _whatsapp_error(
                        400,
                        "(#100) Param text['body'] must be at most 4096 characters long.",
                        100,
                    ),
                )
            wamid = "wamid." + secrets.token_urlsafe(24)
            answer = {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": wamid}],
            }
            sent = Sent(
                reply_id=request.headers.get(REPLY_ID_HEADER, ""),
                platform="whatsapp",
                chat=to,
                thread=None,
                text=body,
                sender=credential,
                at=time.monotonic(),
                message_id=wamid,
                payload=fields,
            )
            return sent, _json(200, answer)

        return await self._handle("whatsapp", request, authorize, accept)


# -- the platforms' answers ------------------------------------------------------------------


def _telegram_error(status: int, description: str, **extra: Any) -> web.Response:
    return _json(status, {"ok": False, "error_code": status, "description": description, **extra})


def _twilio_error(code: int, message: str, status: int = 400) -> web.Response:
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    return _json(
        status, {"code": code, "message": message, "more_info": more_info, "status": status}
    )


def _whatsapp_error(status: int, message: str, code: int, **extra: Any) -> web.Response:
    error = {"message": message, "type": "OAuthException", "code": code, **extra}
    error["fbtrace_id"] = secrets.token_urlsafe(12)
    return _json(status, {"error": error})


def _down_answer(platform: Platform) -> web.Response:
    if platform == "telegram":
        return _telegram_error(503, "Service Unavailable")
    if platform == "slack":
        return _json(503, {"ok": False, "error": "service_unavailable"})
    if platform == "twilio":
        return _twilio_error(20503, "Service Unavailable", status=503)
    return _whatsapp_error(503, "Service temporarily unavailable", 2, is_transient=True)


def _throttled_answer(platform: Platform, retry_after: int) -> web.Response:
    headers = {"Retry-After": str(retry_after)}
    if platform == "telegram":
        return _json(
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {retry_after}",
                "parameters": {"retry_after": retry_after},
            },
            headers,
        )
    if platform == "slack":
        return _json(429, {"ok": False, "error": "ratelimited"}, headers)
    if platform == "twilio":
        return _json(
            429,
            {
                "code": 20429,
                "message": "Too Many Requests",
                "more_info": "https://www.twilio.com/docs/errors/20429",
                "status": 429,
            },
            headers,
        )
    return _json(
        429,
        {
            "error": {
                "message": "(#130429) Rate limit hit",
                "type": "OAuthException",
                "code": 130429,
                "fbtrace_id": secrets.token_urlsafe(12),
            }
        },
        headers,
    )


# -- parsing ---------------------------------------------------------------------------------


async def _fields(request: web.Request) -> dict[str, Any]:
    """The request's parameters: a JSON object, form fields, or the query string.

    Telegram and Slack take either JSON or a form; Twilio takes a form; WhatsApp takes JSON.
    A body that is neither reads as no fields, so the platform's "required" error follows.
    """
    raw = await request.read()
    fields: dict[str, Any] = dict(request.query)
    if not raw:
        return fields
    if request.content_type == "application/json":
        try:
            parsed = json.loads(raw)
        except ValueError:
            return fields
        if isinstance(parsed, dict):
            fields.update(parsed)
        return fields
    if request.content_type in ("application/x-www-form-urlencoded", ""):
        fields.update(_form(raw))
    return fields


def _form(raw: bytes) -> dict[str, Any]:
    """Form fields; a repeated one (Twilio's ``MediaUrl``) keeps every value in a list."""
    fields: dict[str, Any] = {}
    for name, value in parse_qsl(raw.decode(), keep_blank_values=True):
        if name in fields:
            previous = fields[name]
            fields[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            fields[name] = value
    return fields


def _basic(request: web.Request) -> tuple[str, str]:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = b64decode(encoded.strip()).decode().partition(":")
    except ValueError:
        return "", ""
    return user, password


def _int_if_digits(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


# -- for synchronous tests -------------------------------------------------------------------


class PlatformsThread:
    """Runs a `PlatformsFake` on its own event loop in a background thread.

    ``with PlatformsThread() as platforms:`` starts it (on ``port``, else a free one);
    ``platforms.fake`` is the fake, whose fault switches and readers work from the test's
    thread, and ``platforms.base_url`` its API base.
    """

    def __init__(self, fake: PlatformsFake | None = None, port: int = 0) -> None:
        self.fake = fake if fake is not None else PlatformsFake()
        fake_ = self.fake
        self._thread = LoopThread(lambda: fake_.start(port), fake_.stop, "platforms-fake")

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def __enter__(self) -> PlatformsThread:
        self._thread.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.__exit__(*exc)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Block until ``predicate()`` holds; fail the test (AssertionError) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "the platforms never saw what was awaited"
            time.sleep(0.01)

    def wait_for_texts(
        self, platform: Platform, chat: str | int, count: int, timeout_s: float = 5.0
    ) -> list[str]:
        """Block until ``chat`` on ``platform`` has at least ``count`` texts; return them all."""
        self.wait_for(lambda: len(self.fake.sent_to(platform, chat)) >= count, timeout_s)
        return self.fake.sent_to(platform, chat)
