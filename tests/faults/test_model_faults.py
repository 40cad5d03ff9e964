"""The model misbehaving: a 429 with Retry-After, a 500, a stream dropped halfway, a stream
that stalls, a model that keeps failing, and a poison turn that kills every worker that
runs it. Retries are bounded, a turn that cannot finish fails with a reason, the poison
turn becomes a dead letter and its session goes on, and other sessions do not wait."""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from shared.keys import SessionKeys
from shared.settings import Settings
from tests.support.cluster import Cluster
from tests.support.faults import metrics_of, settle, verdict
from tests.support.streaming_server import StreamingModelServer
from tests.support.traffic import Traffic, User

FULL_REPLY = " ".join(f"w{i}" for i in range(30))
POISON = "this message kills whoever answers it"


def _record(client: redis.Redis, settings: Settings, session: str, turn_id: str) -> Any:
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, session)
    raw = client.hget(keys.turns, turn_id)
    return json.loads(raw) if raw else None  # type: ignore[arg-type]


def _latencies_s(client: redis.Redis, settings: Settings, traffic: Traffic) -> list[float]:
    found = []
    for told in traffic.told:
        record = _record(client, settings, told.session, told.turn_id)
        start, end = record["created_at"], record["finished_at"]
        found.append((end - start) / 1000 if isinstance(start, int) else 0.0)
    return found


def test_a_misbehaving_model_is_retried_within_bounds_then_fails_with_a_reason(
    fault_settings: Callable[..., Settings],
    streaming_model: StreamingModelServer,
    client: redis.Redis,
    tmp_path: Path,
) -> None:
    settings = fault_settings(model_max_retries=2, model_timeout_s=1.0)
    faults = {
        "throttled": "fault=429",
        "erred": "fault=500",
        "dropped": "fault=drop",
        "stalled": "fault=stall",
        "broken": "fault=500 faults=9",  # more than the retries: it fails
    }
    users = [User(settings.default_tenant, f"calm{i}") for i in range(8)]
    with Cluster(settings, tmp_path, workers=2, concurrency=64) as cluster:
        http = httpx.Client(base_url=cluster.base_url, timeout=30)
        with Traffic(cluster.base_urls, users, pause_s=0.2) as traffic:
            turns = {
                s: http.post(f"/v1/sessions/{s}/turns", json={"content": f"{c} for {s}"}).json()
                for s, c in faults.items()
            }
            nexts = {
                s: http.post(f"/v1/sessions/{s}/turns", json={"content": "and then?"}).json()
                for s in faults
            }
            time.sleep(4)
        settle(settings, traffic.told, timeout_s=30)
        for session, turn in {**turns, **nexts}.items():
            done = http.get(f"/v1/sessions/{session}/turns/{turn['id']}?wait=20").json()
            assert done["status"] in ("completed", "failed"), done
        retries = metrics_of(cluster.worker_metrics.values(), "chatlane_model_retries_total")
        http.close()
    ended = {s: _record(client, settings, s, t["id"]) for s, t in turns.items()}
    for session in ("throttled", "erred", "dropped", "stalled"):
        record = ended[session]
        assert record["status"] == "completed" and record["attempt"] == 1, record
        assert record["output"]["content"] == FULL_REPLY  # nothing of the failed try in it
    broken = ended["broken"]
    assert broken["status"] == "failed" and broken["error"]["code"] == "retries_exhausted"
    assert "3 requests" in broken["error"]["message"]  # one try and two retries, no more
    for session, turn in nexts.items():
        assert _record(client, settings, session, turn["id"])["status"] == "completed"
    assert retries == 4 + 2
    assert streaming_model.stats.statuses[429] == 1
    assert verdict(settings, traffic.told) == []
    calm = _latencies_s(client, settings, traffic)
    assert statistics.median(calm) < 2.0, statistics.median(calm)


def test_a_poison_turn_is_dead_lettered_after_its_attempts_and_its_session_goes_on(
    fault_settings: Callable[..., Settings],
    streaming_model: StreamingModelServer,
    client: redis.Redis,
    tmp_path: Path,
) -> None:
    settings = fault_settings(lock_ttl_s=1.0, sweep_interval_s=0.3, max_turn_attempts=2)
    users = [User(settings.default_tenant, f"by{i}") for i in range(8)]
    with Cluster(settings, tmp_path, workers=3, concurrency=64) as cluster:
        workers = {p.pid for p in cluster.worker_procs}
        killed: list[int] = []
        guard = threading.Lock()

        def kill_whoever_answers(messages: list[dict[str, Any]], peer: Any) -> None:
            users_said = [m.get("content") for m in messages if m.get("role") == "user"]
            if not users_said or users_said[-1] != POISON:
                return
            for conn in psutil.net_connections(kind="tcp"):
                if conn.laddr and tuple(conn.laddr) == tuple(peer[:2]) and conn.pid in workers:
                    with guard:
                        killed.append(conn.pid)
                    os.kill(conn.pid, signal.SIGKILL)  # as an out-of-memory kill would

        streaming_model.on_request = kill_whoever_answers
        http = httpx.Client(base_url=cluster.base_url, timeout=30)
        with Traffic(cluster.base_urls, users, pause_s=0.2) as traffic:
            poison = http.post("/v1/sessions/poisoned/turns", json={"content": POISON}).json()
            after = http.post("/v1/sessions/poisoned/turns", json={"content": "hello?"}).json()
            done = http.get(f"/v1/sessions/poisoned/turns/{after['id']}?wait=30").json()
        settle(settings, traffic.told, timeout_s=30)
        dead = http.get("/v1/turns/dead-letters").json()
        survivors = [cluster.worker_metrics[n] for n in ("w1", "w2", "w3")]
        counted = 0.0
        for url in survivors:
            try:
                counted += metrics_of([url], "chatlane_turns_dead_lettered_total")
            except httpx.HTTPError:
                continue  # a killed worker
        http.close()
    assert done["status"] == "completed", done
    record = _record(client, settings, "poisoned", poison["id"])
    assert record["status"] == "failed" and record["error"]["code"] == "attempts_exhausted"
    assert len(killed) == 2  # one kill per allowed attempt, then no worker ran it again
    listed = {d["turn_id"]: d for d in dead["data"]}
    assert listed[poison["id"]]["session_id"] == "poisoned"
    # A crash counts against every turn its worker was running: a turn of another session
    # that shared a worker with the poison turn at each of its kills fails with it.
    for entry in listed.values():
        other = _record(client, settings, entry["session_id"], entry["turn_id"])
        assert other["status"] == "failed" and other["error"]["code"] == "attempts_exhausted"
    assert counted == len(listed)
    assert verdict(settings, traffic.told) == []
    calm = _latencies_s(client, settings, traffic)
    assert statistics.median(calm) < 2.0, statistics.median(calm)
