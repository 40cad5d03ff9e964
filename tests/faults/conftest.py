"""Fault tests: real worker and API processes, a private ``redis-server`` that keeps an
append-only file (so it can be SIGKILLed and restarted), a loopback streaming model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.redis_server import ManagedRedis
from shared.settings import Settings
from tests.support.streaming_server import StreamingModelServer


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[ManagedRedis]:
    """A redis-server of this test's own, writing every change to an append-only file
    (fsync every second)."""
    with ManagedRedis(data_dir=tmp_path / "redis") as server:
        yield server


@pytest.fixture
def streaming_model() -> Iterator[StreamingModelServer]:
    """Replies of 30 words, 10 ms apart: each turn streams for about a third of a second."""
    with StreamingModelServer(tokens=30, interval_s=0.01) as server:
        yield server


@pytest.fixture
def fault_settings(
    make_settings: Callable[..., Settings], streaming_model: StreamingModelServer
) -> Callable[..., Settings]:
    """Test settings (a key prefix of the test's own, deleted afterwards) that stream from
    the loopback model; ``redis_url=`` moves them to another server."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model": "openai:loopback",
            "openai_base_url": streaming_model.base_url,
            "openai_api_key": "test-key",
            "webhook_allow_private": True,
            "channel_allow_private": True,
            **overrides,
        }
        return make_settings(**values)

    return build
