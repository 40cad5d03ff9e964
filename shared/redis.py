"""Client factories and start-up checks. Stores take a client, never a URL; callers own
the client's lifetime.

No blocking command (``BLPOP``, ``XREAD BLOCK``) is ever sent on these clients: waiting
goes through ``shared.store.waiting.EventHub``'s pub/sub connection, so a command's
socket timeout bounds only real work.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url

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
        return aioredis.Redis.from_pool(aioredis.ConnectionPool.from_url(normalized(url), **plain))
    options = _options(name, max_connections, waits=True)
    pool = aioredis.BlockingConnectionPool.from_url(normalized(url), **options)
    return aioredis.Redis.from_pool(pool)


def pubsub_client(url: str, *, name: str = "chatlane-hub") -> aioredis.Redis:
    """The client of an ``EventHub``: one connection, and no retries of redis-py's own
    (a retry would reconnect from whichever task hit the error, racing the hub's reader)."""
    options = _options(name, 2, waits=True)
    pool = aioredis.BlockingConnectionPool.from_url(
        normalized(url), retry=Retry(NoBackoff(), 0), **options
    )
    return aioredis.Redis.from_pool(pool)


def sync_client(url: str, *, max_connections: int = 16, name: str = "chatlane") -> redis.Redis:
    """A thread-safe client (tools, the LangChain history adapter, tests)."""
    options = _options(name, max_connections, waits=True)
    return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(normalized(url), **options))


def probe_client(url: str, *, timeout_s: float) -> redis.Redis:
    """A client for a quick look at whatever answers at ``url`` (``timeout_s`` bounds each
    connect and each command); the caller closes it."""
    return redis.Redis.from_url(
        normalized(url), socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )


def answers(url: str, *, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url``."""
    client = probe_client(url, timeout_s=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):  # refused, timed out, or not Redis at all
        return False
    finally:
        client.close()


# ``ssl_cert_reqs`` as Celery's documentation spells it (``CERT_REQUIRED``) and as redis-py
# does (``required``); redis-py refuses the first, kombu takes both.
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _cert_reqs(value: str) -> str:
    name = value.strip().lower().removeprefix("cert_")
    if name not in _CERT_REQS:
        raise ConfigurationError(
            f"ssl_cert_reqs={value} in a Redis URL: use required, optional or none"
        )
    return name


def normalized(url: str) -> str:
    """``url`` as redis-py reads it: ``ssl_cert_reqs=CERT_REQUIRED`` (Celery's spelling)
    becomes ``ssl_cert_reqs=required``. Any other URL comes back unchanged.

    Raises ``ConfigurationError`` for an ``ssl_cert_reqs`` that means nothing, and for a
    URL whose password would be misread as its host, port or path (redis-py's own error
    would quote that part of the password).
    """
    parts = urlsplit(url)
    if _misread(parts):
        raise ConfigurationError(
            f"cannot read the Redis URL {masked(url)}: percent-encode any / ? # @ or : in "
            "its user name and password"
        )
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    fixed = [(k, _cert_reqs(v) if k == "ssl_cert_reqs" else v) for k, v in pairs]
    if fixed == pairs:
        return url
    return urlunsplit(parts._replace(query=urlencode(fixed, quote_via=quote, safe="/")))


def celery_url(url: str) -> str:
    """The broker URL to hand Celery: a ``rediss://`` URL loses its ``ssl_*`` parameters,
    which ``celery_ssl`` carries instead (so kombu never reads them its own way)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not k.startswith("ssl_")]  # fmt: skip
    return urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote, safe="/")))


def celery_ssl(url: str) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` (or ``redis_backend_use_ssl``) for ``url``: None unless
    it is ``rediss://``.

    The options are the URL's ``ssl_*`` parameters as redis-py reads them for the data
    side, so both sides verify the server alike: against the system's CAs (or
    ``ssl_ca_certs``) unless the URL says ``ssl_cert_reqs=none``. Given a bare
    ``rediss://`` URL kombu on its own would skip verification.
    """
    if urlsplit(url).scheme != "rediss":
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}
    parsed: dict[str, Any] = parse_url(normalized(url))  # type: ignore[no-untyped-call]
    options.update((k, v) for k, v in parsed.items() if k.startswith("ssl_"))
    options["ssl_cert_reqs"] = _CERT_REQS[options["ssl_cert_reqs"]]
    return options


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print and log).

    A password with an unencoded ``/``, ``?`` or ``#`` ends the host early, leaving an
    ``@`` after it: then everything before the last ``@`` is hidden. A ``password`` in the
    query is hidden too.
    """
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    # An ``@`` in an ``ssl_*`` value belongs to a file's path; anywhere else, to a password.
    stray_at = any("@" in v for k, v in pairs if not k.startswith("ssl_"))
    if "@" in url and (stray_at or _misread(parts)):
        return f"{parts.scheme}://***@{url.rpartition('@')[2]}"
    if any("password" in k for k, _ in pairs):
        hidden = [(k, "***" if "password" in k else v) for k, v in pairs]
        query = urlencode(hidden, quote_via=quote, safe="/*")
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        url = f"{url.partition('?')[0]}?{query}{fragment}"  # not urlunsplit: keeps unix:///
        parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _misread(parts: SplitResult) -> bool:
    """Whether a password with an unencoded ``/``, ``?`` or ``#`` has ended the host early:
    a host part with no host name, a port that is not a number, or an ``@`` in the path,
    the fragment or a query parameter's name."""
    if parts.scheme == "unix":
        return "@" in parts.path or "@" in parts.fragment
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        return True
    if parts.netloc.rpartition("@")[2] and not parts.hostname:
        return True
    names = (segment.partition("=")[0] for segment in parts.query.split("&"))
    return "@" in parts.path or "@" in parts.fragment or any("@" in name for name in names)


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
