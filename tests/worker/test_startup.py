"""A worker (and the API) refuse to start where they would lose or strand turns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from cli.redis_server import ManagedRedis
from cli.supervise import worker_command
from shared.errors import ConfigurationError
from shared.settings import Settings
from tests.api.conftest import LOCAL
from tests.support.cluster import settings_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def evicting_redis() -> Iterator[str]:
    with ManagedRedis() as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory-policy", "volatile-lru")
        client.close()
        yield server.url


def _start_worker(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLANE_", "OPENAI_"))}
    return subprocess.run(
        worker_command(), env={**env, **settings_env(settings)}, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_worker_refuses_a_model_it_cannot_build_in_one_line(
    make_settings: Callable[..., Settings],
) -> None:
    done = _start_worker(make_settings(model="openai:gpt-4o-mini"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "chatlane worker: CHATLANE_MODEL=openai:gpt-4o-mini needs OPENAI_API_KEY "
        "(any value, for a server that checks none)"
    )


def test_a_worker_refuses_a_redis_that_evicts_keys(
    make_settings: Callable[..., Settings], evicting_redis: str
) -> None:
    done = _start_worker(make_settings(redis_url=evicting_redis))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("chatlane worker: the Redis at ")
    assert "(maxmemory-policy volatile-lru)" in last and "CHATLANE_ALLOW_EVICTION" in last


def test_the_api_refuses_a_redis_that_evicts_keys_unless_told_otherwise(
    make_settings: Callable[..., Settings], evicting_redis: str
) -> None:
    with (
        pytest.raises(ConfigurationError, match="maxmemory-policy volatile-lru"),
        TestClient(create_app(make_settings(redis_url=evicting_redis))),
    ):
        pass
    allowed = make_settings(redis_url=evicting_redis, allow_eviction=True)
    with TestClient(create_app(allowed), client=LOCAL) as api:
        assert api.get("/readyz").status_code == 200
