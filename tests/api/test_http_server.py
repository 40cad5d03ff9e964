"""The server as deployed (``cli.supervise.api_command``: ``python -m api.server``) against
hostile bytes on a raw socket: every refusal is a small problem, the connection is then
closed, nothing is written to Redis, and slow or idle clients are cut off in time."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import redis
from h11._receivebuffer import ReceiveBuffer

from api.http11 import read_request
from cli.redis_server import free_port
from cli.supervise import api_command, spawn, stop_all, wait_for_ready
from shared.settings import Settings
from tests.conftest import isolated_settings
from tests.support.cluster import ROOT, settings_env

TIMEOUT_S = 1.0  # head, body and keep-alive idle time of the server under test
MAX_CONNECTIONS = 24
MAX_BODY = 4096


@dataclass
class Server:
    port: int
    settings: Settings
    log: Path
    proc: subprocess.Popen[bytes]
    redis: redis.Redis

    def keys(self) -> set[bytes]:
        return set(self.redis.scan_iter(match=f"{self.settings.key_prefix}:*"))


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with isolated_settings(redis_url) as build:
        settings = build(
            http_head_timeout_s=TIMEOUT_S,
            http_body_timeout_s=TIMEOUT_S,
            http_idle_timeout_s=1,
            http_max_connections=MAX_CONNECTIONS,
            max_body_bytes=MAX_BODY,
            keepalive_s=0.2,
        )
        port = free_port()
        log = tmp_path_factory.mktemp("api") / "api.log"
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        proc = spawn(api_command("127.0.0.1", port, "--log-level", "info"), env, log=log, cwd=ROOT)
        client = redis.Redis.from_url(redis_url)
        try:
            wait_for_ready(f"http://127.0.0.1:{port}", [proc], timeout_s=30)
            yield Server(port, settings, log, proc, client)
        finally:
            stop_all([proc], grace_s=5)
            client.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool

    def problem(self, status: int, kind: str | None = None) -> dict[str, object]:
        assert self.status == status, (self.status, self.body[:300])
        assert self.headers["content-type"] == "application/problem+json"
        assert len(self.body) < 1024
        document: dict[str, object] = json.loads(self.body)
        assert document["status"] == status
        if kind is not None:
            assert document["type"] == f"urn:chatlane:problem:{kind}"
        return document


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def read_answer(sock: socket.socket) -> Answer:
    """One response: its head, a Content-Length body, and whether the server then closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed without an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    sock.settimeout(0.5)
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    return Answer(int(lines[0].split()[1]), headers, body[:length], closed)


def exchange(server: Server, data: bytes) -> Answer:
    with connect(server) as sock:
        with contextlib.suppress(OSError):  # it answered and stopped reading: still there
            sock.sendall(data)
        return read_answer(sock)


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", *extra]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


TURN = b'{"content": "hi"}'
CH = "chunked"


# 4, 6, 10. The HTTP parser's own refusals are problems, and the connection is closed.


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", 400),
        (b"GET /health\x00z HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (post("/v1/sessions/s/turns", TURN, "Content-Length: 17", "Content-Length: 18"), 400),
        (post("/v1/sessions/s/turns", TURN, "Content-Length: 17", "Content-Length: 17"), 400),
        (post("/v1/sessions/s/turns", TURN, "Content-Length: 17, 17"), 400),
        (post("/v1/sessions/s/turns", TURN, "Content-Length: 17", f"Transfer-Encoding: {CH}"), 400),
        (post("/v1/sessions/s/turns", b"0\r\n\r\n", "Transfer-Encoding: gzip"), 501),
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ],
)
def test_parser_errors_are_problems_and_close_the_connection(
    server: Server, raw: bytes, status: int
) -> None:
    before = server.keys()
    answer = exchange(server, raw)
    answer.problem(status)
    assert answer.closed
    assert server.keys() == before


def test_http_10_with_chunked_framing_is_a_400(server: Server) -> None:
    chunked = b"11\r\n" + TURN + b"\r\n0\r\n\r\n"
    raw = post("/v1/sessions/s/turns", chunked, "Transfer-Encoding: chunked")
    answer = exchange(server, raw.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    answer.problem(400, "bad-http")
    assert answer.closed


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * 300_000 + b"\r\n",
        b"".join(b"X-%d: v\r\n" % i for i in range(20_000)),
    ],
)
def test_a_head_over_the_limit_is_a_431(server: Server, head: bytes) -> None:
    answer = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    answer.problem(431, "head-too-large")
    assert answer.closed


def test_a_head_under_the_limit_is_served_even_in_pieces(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 30_000)
        time.sleep(0.1)
        sock.sendall(b"a" * 30_000 + b"\r\n\r\n")
        assert read_answer(sock).status == 200


def test_a_head_over_the_limit_is_refused_before_it_ends(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
        started = time.monotonic()
        read_answer(sock).problem(431)
        assert time.monotonic() - started < TIMEOUT_S / 2  # not the head timeout's 408


def test_a_head_that_arrives_whole_in_one_read_is_held_to_the_limit_too() -> None:
    buffer = ReceiveBuffer()
    buffer += b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    with pytest.raises(h11.LocalProtocolError) as refused:
        read_request(64 * 1024, buffer)
    assert refused.value.error_status_hint == 431


def test_a_request_line_over_the_limit_is_a_431(server: Server) -> None:
    answer = exchange(server, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    answer.problem(431)


def test_chunk_extensions_are_bounded_with_the_body(server: Server) -> None:
    chunk = b"1;" + b"e" * 30_000 + b"\r\nx\r\n"
    raw = post("/v1/sessions/s/turns", chunk * 20 + b"0\r\n\r\n", "Transfer-Encoding: chunked")
    answer = exchange(server, raw)
    answer.problem(413, "body-too-large")
    assert answer.closed


def test_trailers_are_bounded_like_a_head(server: Server) -> None:
    body = b"11\r\n" + TURN + b"\r\n0\r\n" + b"X-T: " + b"t" * 100_000 + b"\r\n\r\n"
    answer = exchange(server, post("/v1/sessions/s/turns", body, "Transfer-Encoding: chunked"))
    answer.problem(431, "head-too-large")
    assert answer.closed


def test_expect_100_continue_with_a_length_over_the_limit_is_413_without_a_100(
    server: Server,
) -> None:
    raw = post("/v1/sessions/s/turns", b"", "Expect: 100-continue", f"Content-Length: {10**9}")
    answer = exchange(server, raw)
    answer.problem(413, "body-too-large")
    assert answer.closed


def test_a_body_over_the_limit_is_answered_413_before_the_connection_is_reset(
    server: Server,
) -> None:
    answer = exchange(server, post("/v1/sessions/s/turns", b"x" * 2_000_000))
    answer.problem(413)


def test_an_absolute_form_target_is_a_400_and_dot_segments_are_422(server: Server) -> None:
    absolute = b"GET http://evil.example/v1/sessions/s/messages HTTP/1.1\r\nHost: x\r\n\r\n"
    exchange(server, absolute).problem(400, "unsupported-target")
    exchange(server, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").problem(400, "unsupported-target")
    before = server.keys()
    exchange(server, post("/v1/sessions/../turns", TURN)).problem(422, "invalid-request")
    exchange(server, post("/v1/sessions/./turns", TURN)).problem(422, "invalid-request")
    assert server.keys() == before


def test_a_trailing_slash_with_a_forged_host_is_a_404_not_a_redirect(server: Server) -> None:
    raw = b"GET /v1/sessions/s/messages/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    answer = exchange(server, raw)
    answer.problem(404)
    assert "location" not in answer.headers


# 9. Slow and idle clients are cut off; streams are not.


def test_a_connection_that_says_nothing_is_closed_after_the_head_timeout(server: Server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started < TIMEOUT_S + 1.5


def test_a_trickling_head_is_a_408_after_the_head_timeout(server: Server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(4):
            time.sleep(TIMEOUT_S / 3)
            try:
                sock.sendall(b"X-Drip: 1\r\n")
            except OSError:
                break
        answer = read_answer(sock)
        answer.problem(408, "head-timeout")
        assert answer.closed and time.monotonic() - started < TIMEOUT_S + 1.5


def test_a_trickling_body_is_a_408_after_the_body_timeout(server: Server) -> None:
    before = server.keys()
    with connect(server) as sock:
        sock.sendall(post("/v1/sessions/s/turns", TURN)[:-5])
        answer = read_answer(sock)
        answer.problem(408, "body-timeout")
        assert answer.closed
    assert server.keys() == before


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(sock)
        assert answer.status == 200 and not answer.closed
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started < 3


def test_an_event_stream_outlives_every_timeout(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v1/sessions/streamed/events HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        received = b""
        started = time.monotonic()
        while time.monotonic() - started < 3 * TIMEOUT_S:
            chunk = sock.recv(4096)
            assert chunk, "the stream was closed"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200") and received.count(b": keep-alive") >= 3


def test_connections_over_the_cap_are_refused_with_a_503_problem(server: Server) -> None:
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        answer = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer.problem(503, "too-many-connections")
        assert answer.headers["retry-after"] == "1"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status == 200


# 2. A client that hangs up mid-body is not a server error.


def test_a_client_that_hangs_up_mid_body_is_neither_logged_nor_counted_as_5xx(
    server: Server,
) -> None:
    before = server.keys()
    for _ in range(5):
        with connect(server) as sock:
            sock.sendall(post("/v1/sessions/s/turns", TURN)[:-5])
            time.sleep(0.05)
    time.sleep(0.3)
    metrics = exchange(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = metrics.body.decode()
    assert re.search(r'status="499"\} [5-9]', text), text
    assert not re.search(r'status="5\d\d"', text)
    log = server.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log and "unhandled" not in log
    assert server.keys() == before
