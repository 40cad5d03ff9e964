"""Double texting and cancellation with real worker processes, two API processes racing
each other, and a loopback model that streams slowly: every strategy keeps its promises
(checked by the turn checker), cancels stop the model's stream, and nothing of a
cancelled attempt is ever committed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared.keys import SessionKeys
from tests.conftest import isolated_settings
from tests.support.cluster import Cluster
from tests.support.streaming_server import StreamingModelServer
from tests.support.turn_checker import SessionRun, check_turns, observe

SLOW = "tokens=20 interval=0.05"  # a one-second reply
MAX_GROUP = 50


@pytest.fixture(scope="module")
def stub() -> Iterator[StreamingModelServer]:
    with StreamingModelServer(tokens=20, interval_s=0.05) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(
    redis_url: str, stub: StreamingModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with isolated_settings(redis_url) as build:
        settings = build(
            model="openai:loopback",
            openai_base_url=stub.base_url,
            openai_api_key="test-key",
            history_window=100,
            max_coalesced_turns=MAX_GROUP,
            lock_ttl_s=30.0,  # renewals every 10 s: a stop within 1 s is the notice's doing
        )
        logs: Path = tmp_path_factory.mktemp("double-texting-logs")
        with Cluster(settings, logs, workers=2, concurrency=64, apis=2) as running:
            yield running


@pytest.fixture
def http(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.base_url, timeout=30) as c:
        yield c


@pytest.fixture
def client(cluster: Cluster) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(cluster.settings.redis_url, decode_responses=True)
    yield c
    c.close()


def _keys(cluster: Cluster, session: str) -> SessionKeys:
    settings = cluster.settings
    return SessionKeys(settings.key_prefix, settings.default_tenant, session)


def _all_terminal(client: redis.Redis, keys: SessionKeys) -> bool:
    return all(
        '"status":"queued"' not in raw and '"status":"running"' not in raw
        for raw in client.hvals(keys.turns)
    )


async def _settle(client: redis.Redis, keys: list[SessionKeys], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_all_terminal(client, k) for k in keys):
        assert time.monotonic() < deadline, "turns were left pending"
        await asyncio.sleep(0.1)


def _counts(stub: StreamingModelServer) -> tuple[int, int, int]:
    stats = stub.stats
    return len(stats.prompts), stats.completed, stats.abandoned


async def _send(
    http: httpx.AsyncClient, session: str, content: str, strategy: str, **extra: Any
) -> httpx.Response:
    body = {"content": content, "strategy": strategy, **extra}
    return await http.post(f"/v1/sessions/{session}/turns", json=body)


@pytest.mark.parametrize("strategy", ["enqueue", "reject", "interrupt", "rollback", "coalesce"])
def test_a_burst_on_a_streaming_session_keeps_each_strategys_promises(
    cluster: Cluster, stub: StreamingModelServer, client: redis.Redis, strategy: str
) -> None:
    sessions = [f"burst-{strategy}-{i}" for i in range(3)]
    burst = 20
    extra = {"debounce_s": 0.2} if strategy == "coalesce" else {}
    before = _counts(stub)
    refused: dict[str, list[str]] = {s: [] for s in sessions}
    accepted: dict[str, int] = dict.fromkeys(sessions, 0)

    async def one_session(apis: list[httpx.AsyncClient], session: str) -> None:
        long = "tokens=60 interval=0.05"  # three seconds: the burst lands while it streams
        first = await _send(apis[0], session, f"{session} first {long}", strategy, **extra)
        assert first.status_code == 202, first.text
        accepted[session] += 1
        await asyncio.sleep(0.6)  # the first reply is streaming now
        answers = await asyncio.gather(
            *(
                _send(apis[n % 2], session, f"{session} m{n:02d} {SLOW}", strategy, **extra)
                for n in range(1, burst)
            )
        )
        for answer in answers:
            if answer.status_code == 409:
                problem = answer.json()
                assert problem["type"].endswith("session-active"), problem
                assert answer.headers["retry-after"] == "1"
                refused[session].append(problem["turn_id"])
            else:
                assert answer.status_code == 202, answer.text
                accepted[session] += 1

    async def run() -> None:
        apis = [httpx.AsyncClient(base_url=url, timeout=30) for url in cluster.base_urls]
        try:
            await asyncio.gather(*(one_session(apis, s) for s in sessions))
        finally:
            for api in apis:
                await api.aclose()
        await _settle(client, [_keys(cluster, s) for s in sessions])

    asyncio.run(run())
    time.sleep(0.3)  # aborted streams are counted when the stub sees the connection close
    requests, completed, aborted = (
        now - then for now, then in zip(_counts(stub), before, strict=True)
    )
    runs: dict[str, SessionRun] = {}
    for session in sessions:
        runs[session] = observe(client, _keys(cluster, session))
        runs[session].refused = refused[session]
    prompts = [p for p in list(stub.stats.prompts) if "burst-" + strategy in str(p)]
    assert check_turns(runs, prompts=prompts, completed_calls=completed, max_group=MAX_GROUP) == []

    total = len(sessions) * burst
    statuses = [t.status for run in runs.values() for t in run.turns]
    if strategy == "enqueue":
        assert statuses == ["completed"] * total
        assert (requests, completed, aborted) == (total, total, 0)
    elif strategy == "reject":
        # Sent while the first was streaming: every one refused, naming that first turn.
        assert sum(accepted.values()) == len(sessions) and statuses == ["completed"] * 3
        for session, run in runs.items():
            assert refused[session] == [run.turns[0].id] * (burst - 1)
        assert (requests, completed, aborted) == (3, 3, 0)
    elif strategy in ("interrupt", "rollback"):
        for run in runs.values():
            *cancelled, last = run.turns
            assert last.status == "completed"
            reason = "interrupted" if strategy == "interrupt" else "rolled_back"
            assert {(t.status, t.reason) for t in cancelled} == {("cancelled", reason)}
            users = [content for kind, content, _ in run.history if kind == "human"]
            kept = [t.content for t in run.turns] if strategy == "interrupt" else [last.content]
            assert users == kept
        assert completed == len(sessions)  # one answer per session: the last message's
        assert aborted >= len(sessions)  # at least the first, streaming, call of each
        assert requests == completed + aborted
    else:  # coalesce
        assert statuses == ["completed"] * total
        for run in runs.values():
            leaders = [t for t in run.turns if t.answered_by is None]
            assert 1 <= len(leaders) <= 2, [t.seq for t in leaders]
        assert completed <= 2 * len(sessions) and aborted >= len(sessions)
        assert requests == completed + aborted


def _stream_closed_within(stub: StreamingModelServer, open_before: int, limit_s: float) -> float:
    start = time.monotonic()
    while stub.stats.open_streams >= open_before:
        assert time.monotonic() - start < limit_s, "the model kept streaming"
        time.sleep(0.005)
    return time.monotonic() - start


def test_a_cancel_stops_a_streaming_model_call_within_a_second_and_commits_nothing(
    cluster: Cluster, stub: StreamingModelServer, client: redis.Redis, http: httpx.Client
) -> None:
    session = "cancel-streaming"
    turn = http.post(f"/v1/sessions/{session}/turns", json={"content": "long tokens=100"}).json()
    deadline = time.monotonic() + 10
    while stub.stats.open_streams == 0:  # the model is streaming
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    abandoned = stub.stats.abandoned
    answer = http.post(f"/v1/sessions/{session}/turns/{turn['id']}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert answer.json()["cancellation"] == {"reason": "requested", "by": None}
    assert _stream_closed_within(stub, 1, 1.0) < 1.0
    assert stub.stats.abandoned == abandoned + 1  # the connection closed before [DONE]

    # The session goes on at once, and nothing of the cancelled turn was kept.
    started = time.monotonic()
    nxt = http.post(f"/v1/sessions/{session}/turns?wait=10", json={"content": "next"}).json()
    assert nxt["status"] == "completed" and time.monotonic() - started < 5
    run = observe(client, _keys(cluster, session))
    assert [doc_id for _, _, doc_id in run.history] == [
        f"{nxt['id']}:user",
        f"{nxt['id']}:assistant",
    ]
    assert check_turns({session: run}) == []
    # Its stream says so: a cancelled event, and no delta after it.
    events = client.xrange(_keys(cluster, session).events)
    mine = [fields for _, fields in events if fields["turn"] == turn["id"]]
    assert mine[-1]["type"] == "final" and '"cancelled"' in mine[-1]["data"]
    # Repeating the cancel answers the same.
    again = http.post(f"/v1/sessions/{session}/turns/{turn['id']}/cancel")
    assert again.status_code == 200 and again.json() == answer.json()

    # Before the first token, no delta can carry the news: the stop notice alone does.
    slow = http.post(f"/v1/sessions/{session}/turns", json={"content": "a first=5 tokens=3"})
    while stub.stats.open_streams == 0:
        assert time.monotonic() < deadline + 20
        time.sleep(0.01)
    time.sleep(0.3)
    cancelled = http.post(f"/v1/sessions/{session}/turns/{slow.json()['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert _stream_closed_within(stub, 1, 1.0) < 1.0


def test_a_cancel_at_every_stage_does_what_that_stage_allows(
    cluster: Cluster, stub: StreamingModelServer, client: redis.Redis, http: httpx.Client
) -> None:

    def post(session: str, content: str, **extra: Any) -> dict[str, Any]:
        answer = http.post(f"/v1/sessions/{session}/turns", json={"content": content, **extra})
        assert answer.status_code in (200, 202), answer.text
        body: dict[str, Any] = answer.json()
        return body

    def cancel(session: str, turn_id: str) -> httpx.Response:
        return http.post(f"/v1/sessions/{session}/turns/{turn_id}/cancel")

    # Queued behind a running turn: cancelled at once; the running one is untouched.
    running = post("stage-queued", "first tokens=30 interval=0.05")
    queued = post("stage-queued", "second")
    answer = cancel("stage-queued", queued["id"])
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"

    # Waiting for the lock holder's debounce: cancelled, and no model call is made.
    requests = len(stub.stats.prompts)
    waiting = post("stage-debounce", "soon", strategy="coalesce", debounce_s=3)
    time.sleep(0.5)
    assert cancel("stage-debounce", waiting["id"]).json()["status"] == "cancelled"

    # Committed: left as it is, and the answer says so, every time.
    done = http.post("/v1/sessions/stage-done/turns?wait=10", json={"content": "quick"}).json()
    assert done["status"] == "completed"
    for _ in range(2):
        refused = cancel("stage-done", done["id"])
        assert refused.status_code == 409
        problem = refused.json()
        assert problem["type"].endswith("turn-finished") and problem["turn_status"] == "completed"
    assert cancel("stage-done", "turn_" + "0" * 24).status_code == 404

    # Racing the commit: cancels sent around the moment each stream ends. Each turn is
    # either cancelled with nothing kept, or completed with its reply kept; never both.
    sessions = [f"stage-commit-{i}" for i in range(20)]
    turns = {s: post(s, "race tokens=10 interval=0.05") for s in sessions}  # ~0.5 s each

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=cluster.base_urls[-1], timeout=30) as api:

            async def one(i: int, session: str) -> int:
                await asyncio.sleep(0.35 + i * 0.02)  # spread across the end of the stream
                url = f"/v1/sessions/{session}/turns/{turns[session]['id']}/cancel"
                return (await api.post(url)).status_code

            return await asyncio.gather(*(one(i, s) for i, s in enumerate(sessions)))

    codes = asyncio.run(race())
    assert set(codes) <= {200, 409}
    all_keys = [_keys(cluster, s) for s in [*sessions, "stage-queued", "stage-debounce"]]
    asyncio.run(_settle(client, all_keys))
    runs = {s: observe(client, _keys(cluster, s)) for s in sessions}
    for session, code in zip(sessions, codes, strict=True):
        (turn,) = runs[session].turns
        assert turn.status == ("cancelled" if code == 200 else "completed"), (session, code)
    assert check_turns(runs) == []

    first = observe(client, _keys(cluster, "stage-queued"))
    assert [t.status for t in first.turns] == ["completed", "cancelled"]
    assert [d for _, _, d in first.history] == [
        f"{running['id']}:user",
        f"{running['id']}:assistant",
    ]
    debounced = observe(client, _keys(cluster, "stage-debounce"))
    assert debounced.history == [] and not any(
        "soon" in str(p) for p in stub.stats.prompts[requests:]
    )


def test_session_and_tenant_defaults_choose_the_strategy_of_turns_that_do_not(
    cluster: Cluster, client: redis.Redis, http: httpx.Client
) -> None:
    assert http.get("/v1/defaults").json() == {"strategy": None, "debounce_s": None}
    session = http.put("/v1/sessions/defaults-s/defaults", json={"strategy": "rollback"})
    assert session.status_code == 200 and session.json()["strategy"] == "rollback"
    first = http.post("/v1/sessions/defaults-s/turns", json={"content": "a tokens=40"}).json()
    second = http.post("/v1/sessions/defaults-s/turns?wait=10", json={"content": "b"}).json()
    assert (first["strategy"], second["strategy"]) == ("rollback", "rollback")
    assert http.get(f"/v1/sessions/defaults-s/turns/{first['id']}").json()["status"] == "cancelled"

    # The tenant's default applies where neither the turn nor the session chose.
    assert http.put("/v1/defaults", json={"strategy": "reject"}).status_code == 200
    try:
        time.sleep(2.1)  # every API replica reads it again within two seconds
        for url in cluster.base_urls:
            with httpx.Client(base_url=url, timeout=30) as api:
                made = api.post("/v1/sessions/defaults-t/turns", json={"content": "x tokens=40"})
                assert made.status_code == 202 and made.json()["strategy"] == "reject"
                busy = api.post("/v1/sessions/defaults-t/turns", json={"content": "y"})
                assert busy.status_code == 409, busy.text
                chosen = api.post(
                    "/v1/sessions/defaults-t/turns", json={"content": "z", "strategy": "enqueue"}
                )
                assert chosen.status_code == 202
                asyncio.run(_settle(client, [_keys(cluster, "defaults-t")]))
    finally:
        http.put("/v1/defaults", json={})


def _post_and_hang_up(cluster: Cluster, session: str, query: str, after_s: float) -> None:
    """POST a slow turn with ``?wait``, then close the connection before the answer."""
    body = b'{"content": "long tokens=100"}'
    head = (
        f"POST /v1/sessions/{session}/turns?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as sock:
        sock.sendall(head + body)
        time.sleep(after_s)


def test_a_client_that_hangs_up_on_a_wait_cancels_the_turn_only_when_it_asked_to(
    cluster: Cluster, stub: StreamingModelServer, client: redis.Redis
) -> None:
    _post_and_hang_up(cluster, "hang-up-kept", "wait=30", 0.8)
    _post_and_hang_up(cluster, "hang-up-cancels", "wait=30&cancel_on_disconnect=true", 0.8)
    kept, gone = _keys(cluster, "hang-up-kept"), _keys(cluster, "hang-up-cancels")
    deadline = time.monotonic() + 3
    while not _all_terminal(client, gone):
        assert time.monotonic() < deadline, "the turn went on after its client left"
        time.sleep(0.05)
    assert [t.reason for t in observe(client, gone).turns] == ["disconnected"]
    asyncio.run(_settle(client, [kept]))
    assert [t.status for t in observe(client, kept).turns] == ["completed"]
