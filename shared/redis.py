"""Client factories. Stores take a client, never a URL; callers own the client's lifetime."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis


def sync_client(url: str, *, max_connections: int = 64) -> redis.Redis:
    """A thread-safe client whose pool blocks (rather than fails) when all connections are busy."""
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, decode_responses=True
    )
    return redis.Redis.from_pool(pool)


def async_client(url: str, *, max_connections: int = 4096) -> aioredis.Redis:
    """An asyncio client; long-polls hold one connection each while they wait."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, decode_responses=True
    )
    return aioredis.Redis.from_pool(pool)


def answers(url: str, *, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):  # refused, timed out, or not Redis at all
        return False
    finally:
        client.close()
