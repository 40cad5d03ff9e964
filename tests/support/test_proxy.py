"""The fault proxy itself, in front of the test Redis: it forwards, delays each chunk,
resets every connection at once, and blackholes until restored."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.proxy import FaultProxy

PING = b"*1\r\n$4\r\nPING\r\n"


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    target = urlsplit(redis_url)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as running:
        yield running


def _connect(proxy: FaultProxy, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout_s)


def _ping(sock: socket.socket) -> bytes:
    sock.sendall(PING)
    return sock.recv(64)


def test_it_forwards_both_ways_and_points_urls_at_itself(proxy: FaultProxy, redis_url: str) -> None:
    with _connect(proxy) as sock:
        assert _ping(sock) == b"+PONG\r\n"
        assert proxy.connections == 1
    url = urlsplit(proxy.url("redis://user:pw@127.0.0.1:1/3"))
    assert (url.username, url.password, url.port, url.path) == ("user", "pw", proxy.port, "/3")


def test_a_delay_holds_every_chunk_each_way(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        _ping(sock)  # connected upstream
        proxy.delay(0.15, 0.2)
        started = time.monotonic()
        assert _ping(sock) == b"+PONG\r\n"
        took = time.monotonic() - started
        proxy.delay(0)
        started = time.monotonic()
        _ping(sock)
        undelayed = time.monotonic() - started
    assert took >= 0.3  # a request and its answer, each held
    assert undelayed < took


def test_a_reset_ends_every_open_connection_with_a_tcp_reset(proxy: FaultProxy) -> None:
    socks = [_connect(proxy) for _ in range(3)]
    try:
        for sock in socks:
            _ping(sock)
        assert proxy.reset() == 3
        for sock in socks:
            with pytest.raises(ConnectionResetError):
                sock.recv(64)
        assert proxy.connections == 0 and proxy.resets == 3
        with _connect(proxy) as fresh:  # new connections are served as before
            assert _ping(fresh) == b"+PONG\r\n"
    finally:
        for sock in socks:
            sock.close()


def test_a_blackhole_answers_nothing_until_restored_then_lets_the_held_bytes_through(
    proxy: FaultProxy,
) -> None:
    with _connect(proxy, timeout_s=0.5) as sock:
        _ping(sock)
        proxy.blackhole()
        sock.sendall(PING)
        with pytest.raises(TimeoutError):
            sock.recv(64)
        with _connect(proxy, timeout_s=0.5) as newcomer:  # accepted, then silence
            newcomer.sendall(PING)
            with pytest.raises(TimeoutError):
                newcomer.recv(64)
            proxy.restore()
            newcomer.settimeout(5)
            assert newcomer.recv(64) == b"+PONG\r\n"
        sock.settimeout(5)
        assert sock.recv(64) == b"+PONG\r\n"


def test_a_stranded_connection_never_carries_another_byte_while_new_ones_do(
    proxy: FaultProxy,
) -> None:
    with _connect(proxy, timeout_s=0.5) as sock:
        _ping(sock)
        proxy.blackhole()
        assert proxy.strand() == 1
        proxy.restore()
        sock.sendall(PING)
        with pytest.raises(TimeoutError):
            sock.recv(64)
        with _connect(proxy) as fresh:
            assert _ping(fresh) == b"+PONG\r\n"
