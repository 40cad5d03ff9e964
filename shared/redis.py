"""Client factories and start-up checks. Stores take a client, never a URL; callers own
the client's lifetime.

No blocking command (``BLPOP``, ``XREAD BLOCK``) is ever sent on these clients: waiting
goes through ``shared.store.waiting.EventHub``'s pub/sub connection, so a command's
socket timeout bounds only real work.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from shared.errors import ConfigurationError

COMMAND_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0


def _options(name: str, max_connections: int, *, waits: bool) -> dict[str, Any]:
    """What every chatlane pool has: named connections, ``str`` replies, bounded socket
    waits; ``waits``: a blocking pool waits that long for a free connection."""
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "socket_timeout": COMMAND_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "client_name": name,
        "decode_responses": True,
    }
    if waits:
        options["timeout"] = COMMAND_TIMEOUT_S
    return options


def async_client(
    url: str, *, max_connections: int = 256, name: str = "chatlane", bounded: bool = False
) -> aioredis.Redis:
    """An asyncio client; connections are named for ``CLIENT LIST``.

    Its pool waits (up to the command timeout) for a free connection rather than
    failing. ``bounded``: the caller never runs more than ``max_connections`` commands
    at once (a worker: one per session it drains, plus its heartbeat and sweeper), so a
    plain pool will do, which costs ~15-30 us less CPU per command here.
    """
    if bounded:
        plain = _options(name, max_connections, waits=False)
        return aioredis.Redis.from_pool(aioredis.ConnectionPool.from_url(url, **plain))
    options = _options(name, max_connections, waits=True)
    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(url, **options))


def pubsub_client(url: str, *, name: str = "chatlane-hub") -> aioredis.Redis:
    """The client of an ``EventHub``: one connection, and no retries of redis-py's own
    (a retry would reconnect from whichever task hit the error, racing the hub's reader)."""
    options = _options(name, 2, waits=True)
    pool = aioredis.BlockingConnectionPool.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    return aioredis.Redis.from_pool(pool)


def sync_client(url: str, *, max_connections: int = 16, name: str = "chatlane") -> redis.Redis:
    """A thread-safe client (tools, the LangChain history adapter, tests)."""
    options = _options(name, max_connections, waits=True)
    return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(url, **options))


def answers(url: str, *, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):  # refused, timed out, or not Redis at all
        return False
    finally:
        client.close()


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print and log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def eviction_problem(policy: str, url: str) -> str | None:
    """Why a server with ``maxmemory-policy`` ``policy`` must not hold chatlane's data."""
    if policy == "noeviction":
        return None
    return (
        f"the Redis at {masked(url)} evicts keys when full (maxmemory-policy {policy}): an "
        "evicted mailbox or turn record is a lost turn. Set maxmemory-policy noeviction, "
        "or CHATLANE_ALLOW_EVICTION=true to run anyway."
    )


async def check_eviction_policy(client: Any, url: str) -> None:
    """Raise ``ConfigurationError`` unless the server never evicts keys."""
    info = await client.info("memory")
    problem = eviction_problem(str(info.get("maxmemory_policy", "noeviction")), url)
    if problem is not None:
        raise ConfigurationError(problem)
