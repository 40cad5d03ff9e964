"""Fixtures: a real Redis for every test, isolated by key prefix (and queue name)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from cli.redis_server import ManagedRedis
from shared.keys import SessionKeys
from shared.redis import async_client, sync_client
from shared.settings import Settings
from shared.store import SessionStore

TEST_DEFAULTS: dict[str, Any] = {
    "sweep_interval_s": 0.5,
    "lock_ttl_s": 5.0,
    "model_timeout_s": 10.0,
    "turn_deadline_s": 30.0,
    "retry_backoff_s": 0.01,
    "settle_heap": False,  # the API and engines that tests run share the pytest process
}


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``CHATLANE_TEST_REDIS_URL`` if set, else a private ``redis-server`` on a free port.

    A private server is the default so that tests never touch data they did not write;
    on a shared server every test still keeps to its own key prefix.
    """
    external = os.environ.get("CHATLANE_TEST_REDIS_URL")
    if external:
        yield external
        return
    with ManagedRedis() as server:
        yield server.url


@contextmanager
def isolated_settings(redis_url: str) -> Iterator[Callable[..., Settings]]:
    """Yields a ``Settings`` builder with its own key prefix and queue; overrides by keyword.

    Everything under the prefix (and the queue) is deleted afterwards.
    """
    tag = secrets.token_hex(4)

    def build(**overrides: Any) -> Settings:
        values = {
            "redis_url": redis_url,
            "key_prefix": f"t{tag}",
            "queue": f"chatlane-t{tag}",
            **TEST_DEFAULTS,
        }
        values.update(overrides)
        return Settings(**values)

    yield build
    cleaner = redis.Redis.from_url(redis_url)
    try:
        doomed = list(cleaner.scan_iter(match=f"t{tag}:*", count=1000))
        doomed += list(cleaner.scan_iter(match=f"*chatlane-t{tag}*", count=1000))
        for i in range(0, len(doomed), 500):
            cleaner.delete(*doomed[i : i + 500])
    finally:
        cleaner.close()


@pytest.fixture
def make_settings(redis_url: str) -> Iterator[Callable[..., Settings]]:
    with isolated_settings(redis_url) as build:
        yield build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    """A synchronous client for looking at what the code under test wrote."""
    c = sync_client(settings.redis_url)
    yield c
    c.close()


@pytest.fixture
async def make_store(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., SessionStore]]:
    """Stores on one asyncio client, each with the test's settings plus overrides."""
    aclient = async_client(make_settings().redis_url)
    yield lambda **overrides: SessionStore(aclient, make_settings(**overrides))
    await aclient.aclose()


@pytest.fixture
def store(make_store: Callable[..., SessionStore]) -> SessionStore:
    return make_store()


@pytest.fixture
def keys(settings: Settings) -> SessionKeys:
    return SessionKeys(settings.key_prefix, "acme", "s-1")
