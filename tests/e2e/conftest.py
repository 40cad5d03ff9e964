"""One model server and one cluster (API + 3 Celery worker processes) per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import isolated_settings
from tests.support.checker import conversation_of
from tests.support.cluster import Cluster
from tests.support.openai_server import ModelServer


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServer]:
    with ModelServer(latency_s=0.02, conversation_of=conversation_of) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(
    redis_url: str, model_server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with isolated_settings(redis_url) as build:
        settings = build(
            model="openai:loopback",
            openai_base_url=model_server.base_url,
            openai_api_key="test-key",
            history_window=40,
        )
        logs: Path = tmp_path_factory.mktemp("cluster-logs")
        with Cluster(settings, logs, workers=3, concurrency=16) as running:
            yield running
