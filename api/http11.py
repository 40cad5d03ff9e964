"""uvicorn's h11 protocol with the limits a public HTTP/1.1 server needs.

uvicorn's own protocols bound almost nothing: httptools (picked whenever it is installed)
takes a head of any size, neither waits for a head or body with a deadline, and every
parser error is answered in ``text/plain``. This protocol, which ``api.server`` runs:

- bounds the head (request line and headers), and trailers, to
  ``HttpLimits.max_head_bytes`` (431), and the head's arrival to ``head_timeout_s``
  (408 when part of a head came, else a silent close: nobody asked anything);
- answers every parser error as a problem: malformed request line, bad method token or
  header, conflicting or repeated ``Content-Length``, ``Transfer-Encoding`` beside
  ``Content-Length`` or under HTTP/1.0 (400), an HTTP version other than 1.0 and 1.1
  (505), a transfer coding other than chunked (501);
- bounds what a body costs on the wire, chunk extensions included, to twice the body
  limit plus a head (413);
- holds at most ``max_connections`` connections, answering the next ones 503;
- closes by lingering, as nginx does: it half-closes and discards what the client still
  sends for up to ``LINGER_S`` (a plain close with unread input resets the connection,
  and the client may lose the answer it was sent, such as a 413 or a 431);
- serves no WebSocket upgrade (the API has none), so no request leaves these checks.

Protocol-level refusals are written by the server itself: the app, its middleware and
its metrics never see them. ``uvicorn api.main:app`` without this protocol still runs
every app-level guard (``api.guards``), just not these.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any, cast

import h11
import uvicorn
from h11._readers import maybe_read_from_IDLE_client
from h11._receivebuffer import ReceiveBuffer
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from api.problems import PROBLEM_JSON, document

log = logging.getLogger("chatlane.api.http")
WARN_EVERY_S = 10.0
LINGER_S = 3.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Seconds and bytes; ``max_body_bytes`` is the app's body limit (``api.guards``)."""

    head_timeout_s: float = 10.0
    max_head_bytes: int = 64 * 1024
    max_body_bytes: int = 256 * 1024
    max_connections: int = 32_768

    @property
    def max_body_wire_bytes(self) -> int:
        return 2 * self.max_body_bytes + self.max_head_bytes


_last_warning = 0.0


def _warn_over_capacity(cap: int) -> None:
    """At most one warning every ``WARN_EVERY_S``: a flood of refusals is one event."""
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARN_EVERY_S:
        _last_warning = now
        log.warning("over %d connections: refusing new ones until some close", cap)


class HardenedConfig(uvicorn.Config):
    """``uvicorn.Config`` that carries the limits to every worker process."""

    def __init__(self, app: Any, *, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(app, http=HardenedH11Protocol, ws="none", **kwargs)
        self.http_limits = limits


class _Head:
    """The lines of one complete head, handed to h11's own request reader."""

    def __init__(self, lines: list[bytearray]) -> None:
        self.lines = lines

    def maybe_extract_lines(self) -> list[bytearray]:
        return self.lines

    def is_next_line_obviously_invalid_request_line(self) -> bool:
        return False


def read_request(max_head_bytes: int, buf: ReceiveBuffer) -> h11.Request | None:
    """h11's reader of a request head, plus what h11 lets through: a head past the limit
    in one read, a repeated ``Content-Length`` (h11 keeps one when they agree), framing
    that two servers could read two ways, and versions other than 1.0 and 1.1."""
    lines = buf.maybe_extract_lines()
    if lines is None:
        if buf.is_next_line_obviously_invalid_request_line():
            raise h11.LocalProtocolError("illegal request line")
        return None
    if sum(len(line) + 2 for line in lines) > max_head_bytes:
        raise h11.LocalProtocolError("request head too large", error_status_hint=431)
    fields = [line.split(b":", 1) for line in lines[1:]]
    names = [bytes(field[0].strip().lower()) for field in fields]
    request = maybe_read_from_IDLE_client(_Head(lines))  # type: ignore[arg-type]
    if request is None:
        return None
    if request.http_version not in (b"1.0", b"1.1"):
        raise h11.LocalProtocolError("HTTP version not supported", error_status_hint=505)
    lengths = [f[-1] for f, name in zip(fields, names, strict=True) if name == b"content-length"]
    if len(lengths) > 1 or any(b"," in value for value in lengths):
        raise h11.LocalProtocolError("repeated Content-Length")
    if b"transfer-encoding" in names and (
        b"content-length" in names or request.http_version == b"1.0"
    ):
        raise h11.LocalProtocolError("Transfer-Encoding with Content-Length or under HTTP/1.0")
    return request


class StrictConnection(h11.Connection):
    """An h11 server connection that reads heads with ``read_request`` and keeps the
    last parser error, so the answer can carry the status it calls for."""

    def __init__(self, max_head_bytes: int) -> None:
        self.max_head_bytes = max_head_bytes  # before h11 picks its first reader
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.error: h11.RemoteProtocolError | None = None

    def _get_io_object(self, role: Any, event: Any, io_dict: Any) -> Any:
        found = super()._get_io_object(role, event, io_dict)
        if found is maybe_read_from_IDLE_client:
            return partial(read_request, self.max_head_bytes)
        return found

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise
        if isinstance(event, h11.EndOfMessage) and event.headers:
            # Trailers that arrive whole in one read are never held to h11's buffer limit.
            size = sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
            if size > self.max_head_bytes:
                self.error = h11.RemoteProtocolError("trailers too large", error_status_hint=431)
                raise self.error
        return event


class LingeringTransport:
    """The transport as uvicorn's code sees it, except that ``close`` lingers."""

    def __init__(self, protocol: HardenedH11Protocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport

    def close(self) -> None:
        self._protocol.linger()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HardenedH11Protocol(H11Protocol):
    """uvicorn's ``H11Protocol`` with ``HttpLimits`` (from ``HardenedConfig``, else the
    defaults); see the module docstring."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: HttpLimits = getattr(config, "http_limits", None) or HttpLimits()
        self.strict = StrictConnection(self.limits.max_head_bytes)
        self.conn = self.strict
        self.head_timer: asyncio.TimerHandle | None = None
        self.over_capacity = False
        self.body_wire_bytes = 0
        self.raw_transport: asyncio.Transport | None = None
        self.lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.raw_transport = transport
        self.transport = cast(asyncio.Transport, LingeringTransport(self, transport))
        self.over_capacity = len(self.connections) > self.limits.max_connections
        self._await_head()

    def linger(self) -> None:
        """Half-close, discard input until the client closes or ``LINGER_S`` passed, then
        close: the client reads the whole answer before any reset."""
        transport = self.raw_transport
        if transport is None or transport.is_closing() or self.lingering:
            return
        self.lingering = True
        self._head_arrived()
        self.flow.resume_reading()
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        self.loop.call_later(LINGER_S, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.transport.is_closing():
            return
        if self.over_capacity:
            _warn_over_capacity(self.limits.max_connections)
            self.answer(
                503,
                "Too many connections",
                "This server holds as many connections as it may; retry.",
                kind="too-many-connections",
                headers={"retry-after": "1"},
            )
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self._await_head()
        elif state is h11.SEND_BODY:
            self.body_wire_bytes += len(data)
            if self.body_wire_bytes > self.limits.max_body_wire_bytes:
                self._abandon_cycle()
                self.answer(
                    413,
                    "Request body too large",
                    "The body, with its framing, is larger than this server reads.",
                    kind="body-too-large",
                )
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_arrived()

    def _should_upgrade(self) -> bool:
        return False  # no WebSocket routes: an Upgrade header is ignored, not logged

    def send_400_response(self, msg: str) -> None:
        """Answer a parser error (uvicorn's own answer is ``text/plain``)."""
        error = self.strict.error
        status = error.error_status_hint if error is not None else 400
        mid_cycle = self._abandon_cycle()
        if mid_cycle and self.cycle.response_started:
            self.linger()
            return
        if status == 431:
            self.answer(
                431,
                "Request header fields too large",
                f"The request line and headers are limited to {self.limits.max_head_bytes} bytes.",
                kind="head-too-large",
            )
        elif status == 505:
            self.answer(
                505,
                "HTTP version not supported",
                "This server speaks HTTP/1.1 (and 1.0).",
                kind="http-version-not-supported",
            )
        elif status == 501:
            self.answer(
                501,
                "Transfer coding not supported",
                "The only transfer coding read is chunked.",
                kind="transfer-coding-not-supported",
            )
        else:
            # h11's message, up to where it quotes the offending bytes (never echoed).
            reason = str(error).split(":", 1)[0][:100] if error is not None else msg
            self.answer(400, "Malformed request", f"Malformed HTTP: {reason}.", kind="bad-http")

    def answer(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        kind: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Write a problem and close the connection, whatever state h11 is in."""
        body = json.dumps(document(status, title, detail, kind=kind)).encode()
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"content-type: {PROBLEM_JSON}",
            f"content-length: {len(body)}",
            "connection: close",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self._head_arrived()
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.linger()

    def _abandon_cycle(self) -> bool:
        """Tell a running request that its client is gone (its answer would be written
        over ours); whether one was running."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return False
        cycle.disconnected = True
        cycle.message_event.set()
        return True

    def _await_head(self) -> None:
        if self.head_timer is None:
            self.body_wire_bytes = 0
            self.head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_late)

    def _head_arrived(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_late(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial_head, _ = self.conn.trailing_data
        if not partial_head:
            self.linger()  # said nothing: nobody to answer
            return
        self.answer(
            408,
            "Request timeout",
            f"The request line and headers did not arrive within {self.limits.head_timeout_s:g} s.",
            kind="head-timeout",
        )
