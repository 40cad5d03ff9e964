"""Nothing lost: a turn whose wake-up message vanished, or whose worker was SIGKILLed
mid-turn, is still completed exactly once, by the sweeper's re-nudge."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store import Turn
from tests.support.cluster import Cluster
from tests.support.store import accept


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _status(client: redis.Redis, keys: SessionKeys, turn_id: str) -> str | None:
    raw = client.hget(keys.turns, turn_id)
    return Turn.from_json(raw).status if raw else None  # type: ignore[arg-type]


def test_a_turn_whose_wake_up_was_lost_is_run_by_the_sweeper(
    make_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    settings = make_settings(sweep_interval_s=0.3)
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "orphan")
    with Cluster(settings, tmp_path, workers=1, api=False):
        # Accepted (and so marked active), but no wake-up is ever sent.
        turn_id = accept(settings, "orphan", "hi")

        assert _wait_for(lambda: _status(client, keys, turn_id) == "completed", 10)
    assert client.llen(keys.history) == 2


def test_a_turn_whose_worker_is_killed_mid_turn_completes_once_on_another_worker(
    make_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    settings = make_settings(echo_delay_s=1.5, lock_ttl_s=1.0, sweep_interval_s=0.3)
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "victim")
    with Cluster(settings, tmp_path, workers=1) as cluster:
        http = httpx.Client(base_url=cluster.base_url, timeout=30)
        first = http.post("/v1/sessions/victim/turns", json={"content": "one"}).json()
        second = http.post("/v1/sessions/victim/turns", json={"content": "two"}).json()
        assert _wait_for(lambda: _status(client, keys, first["id"]) == "running", 10)

        cluster.worker_procs[0].send_signal(signal.SIGKILL)
        cluster.worker_procs[0].wait()
        cluster.start_worker("rescuer")

        for turn in (first, second):
            done = http.get(f"/v1/sessions/victim/turns/{turn['id']}?wait=20").json()
            assert done["status"] == "completed", done
        http.close()

    rescued = Turn.from_json(client.hget(keys.turns, first["id"]))  # type: ignore[arg-type]
    assert rescued.attempt == 2  # started by the killed worker, finished by the rescuer
    history = [json.loads(d)["data"]["content"] for d in client.lrange(keys.history, 0, -1)]
    assert history == [
        "one",
        "echo: one (saw 0 earlier messages)",
        "two",
        "echo: two (saw 2 earlier messages)",
    ]


def test_a_worker_stopped_warmly_finishes_the_turns_it_is_running(
    make_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    settings = make_settings(echo_delay_s=2.0)
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "leaving")
    with Cluster(settings, tmp_path, workers=1) as cluster:
        http = httpx.Client(base_url=cluster.base_url, timeout=30)
        turn = http.post("/v1/sessions/leaving/turns", json={"content": "bye"}).json()
        assert _wait_for(lambda: _status(client, keys, turn["id"]) == "running", 10)
        worker = cluster.worker_procs[0]
        worker.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        assert worker.wait(timeout=30) == 0
        http.close()
    done = Turn.from_json(client.hget(keys.turns, turn["id"]))  # type: ignore[arg-type]
    assert done.status == "completed" and done.attempt == 1  # finished, not abandoned
    assert client.get(keys.lock) is None
