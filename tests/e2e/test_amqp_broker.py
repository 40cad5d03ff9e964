"""The broker can be RabbitMQ: wake-ups go through Celery's own publisher over AMQP."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from kombu import Connection

from shared.settings import Settings
from tests.support.cluster import Cluster

AMQP_URL = os.environ.get("CHATLANE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _rabbitmq_answers() -> bool:
    try:
        with Connection(AMQP_URL, connect_timeout=1) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except (OSError, Exception):
        return False


@pytest.mark.skipif(not _rabbitmq_answers(), reason="no RabbitMQ answers at CHATLANE_TEST_AMQP_URL")
def test_turns_complete_in_order_with_rabbitmq_as_the_broker(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(broker_url=AMQP_URL)
    try:
        with (
            Cluster(settings, tmp_path, workers=1) as cluster,
            httpx.Client(base_url=cluster.base_url, timeout=30) as http,
        ):
            first = http.post("/v1/sessions/rabbit/turns", json={"content": "one"}).json()
            second = http.post("/v1/sessions/rabbit/turns?wait=20", json={"content": "two"})
            assert second.status_code == 200, second.text
            assert second.json()["output"]["content"] == "echo: two (saw 2 earlier messages)"
            assert http.get(f"/v1/sessions/rabbit/turns/{first['id']}").json()["status"] == (
                "completed"
            )
            assert http.get("/readyz").json()["broker"] == "ok"
    finally:
        with Connection(AMQP_URL) as conn:
            channel = conn.channel()
            channel.queue_delete(settings.queue)
