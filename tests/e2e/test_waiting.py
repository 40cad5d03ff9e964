"""Waiting for real, slow turns: waits longer than any socket timeout, and hundreds of
waiting clients that cost the API neither connections nor speed."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from shared.keys import SessionKeys
from tests.conftest import isolated_settings
from tests.support.cluster import Cluster
from tests.support.openai_server import ModelServer

_SLOW = re.compile(r"slow=(\d+)")


def _latency(messages: list[dict[str, Any]]) -> float:
    """A prompt whose last message says ``slow=<s>`` takes that long; others 20 ms."""
    found = _SLOW.search(str(messages[-1].get("content", "")))
    return float(found.group(1)) if found else 0.02


@pytest.fixture(scope="module")
def cluster(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with (
        ModelServer(latency_of=_latency) as model,
        isolated_settings(redis_url) as build,
    ):
        settings = build(
            model="openai:loopback",
            openai_base_url=model.base_url,
            openai_api_key="test-key",
            model_timeout_s=60,
            turn_deadline_s=90,
            max_wait_s=90,
        )
        with Cluster(settings, tmp_path_factory.mktemp("wait-logs"), workers=1) as running:
            yield running


def test_waits_of_8_and_40_seconds_answer_the_finished_turn(cluster: Cluster) -> None:
    async def post_and_wait(http: httpx.AsyncClient, session: str, seconds: int) -> float:
        started = time.monotonic()
        response = await http.post(
            f"/v1/sessions/{session}/turns?wait=60", json={"content": f"slow={seconds}"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["output"] == {"content": f"ack slow={seconds}"}
        return time.monotonic() - started

    async def post_then_poll(http: httpx.AsyncClient, session: str, seconds: int) -> float:
        started = time.monotonic()
        queued = await http.post(
            f"/v1/sessions/{session}/turns", json={"content": f"slow={seconds}"}
        )
        assert queued.status_code == 202, queued.text
        polled = await http.get(f"{queued.headers['location']}?wait=60")
        assert polled.status_code == 200, polled.text
        assert polled.json()["status"] == "completed"
        return time.monotonic() - started

    async def everything() -> list[float]:
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=90) as http:
            return await asyncio.gather(
                post_and_wait(http, "post-8", 8),
                post_and_wait(http, "post-40", 40),
                post_then_poll(http, "get-8", 8),
                post_then_poll(http, "get-40", 40),
            )

    post8, post40, get8, get40 = asyncio.run(everything())
    assert 8 <= post8 < 20 and 8 <= get8 < 20
    assert 40 <= post40 < 55 and 40 <= get40 < 55


def test_hundreds_of_waiting_clients_hold_no_connections_and_slow_nothing(
    cluster: Cluster,
) -> None:
    settings = cluster.settings
    waiters = 400
    inspect = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    for i in range(waiters):  # held by a "worker" that never finishes: the turns stay queued
        inspect.set(
            SessionKeys(settings.key_prefix, settings.default_tenant, f"held-{i}").lock, "x"
        )

    def connections(name: str) -> int:
        return sum(1 for c in inspect.client_list() if c.get("name") == name)

    async def scenario() -> tuple[float, int, int, list[int]]:
        limits = httpx.Limits(max_connections=waiters + 10)
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60, limits=limits) as http:
            locations = []
            for i in range(waiters):
                queued = await http.post(f"/v1/sessions/held-{i}/turns", json={"content": "x"})
                locations.append(queued.headers["location"])
            polls = [asyncio.create_task(http.get(f"{loc}?wait=10")) for loc in locations]
            await asyncio.sleep(3)  # every poll is waiting by now
            started = time.monotonic()
            unrelated = await http.post("/v1/sessions/free/turns?wait=10", json={"content": "hi"})
            took = time.monotonic() - started
            assert unrelated.status_code == 200, unrelated.text
            api_connections = connections("chatlane-api")
            hub_connections = connections("chatlane-api-hub")
            statuses = [(await p).status_code for p in polls]
            return took, api_connections, hub_connections, statuses

    try:
        took, api_connections, hub_connections, statuses = asyncio.run(scenario())
    finally:
        for i in range(waiters):
            inspect.delete(
                SessionKeys(settings.key_prefix, settings.default_tenant, f"held-{i}").lock
            )
        inspect.close()
    assert statuses == [200] * waiters  # each answered with its turn, still queued
    assert hub_connections == 1
    # The pool grows to the peak of concurrent short commands, never one per waiter.
    assert api_connections <= 64
    assert took < 2.0
