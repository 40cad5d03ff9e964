"""The incident, reproduced and defeated: many concurrent users through the HTTP API,
real Celery worker processes, and ``ChatOpenAI`` talking to a loopback model server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis

from shared.apikeys import KeyRing, with_ring
from shared.keys import SessionKeys
from tests.support.checker import Observation, check, message_for
from tests.support.cluster import Cluster
from tests.support.openai_server import ModelServer


async def _send(http: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
    """One request, retried on a dropped connection the way a careful client would (POSTs
    carry an Idempotency-Key, so a retry can never queue a turn twice)."""
    for attempt in range(4):
        try:
            return await http.request(method, url, **kw)
        except httpx.TransportError:
            if attempt == 3:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def _post(http: httpx.AsyncClient, session: str, content: str) -> dict[str, object]:
    response = await _send(
        http, "POST", f"/v1/sessions/{session}/turns",
        json={"content": content}, headers={"Idempotency-Key": content[-16:]},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    assert response.headers["location"].endswith(response.json()["id"])
    body: dict[str, object] = response.json()
    return body


async def _finish(http: httpx.AsyncClient, session: str, turn_id: str) -> str:
    for _ in range(12):
        url = f"/v1/sessions/{session}/turns/{turn_id}"
        response = await _send(http, "GET", url, params={"wait": 30})
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        if status in {"completed", "failed", "cancelled"}:
            return status
    return "stranded"


def _histories(cluster: Cluster, sessions: list[str]) -> dict[str, list[tuple[str, str]]]:
    settings = cluster.settings
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        out = {}
        for session in sessions:
            keys = SessionKeys(settings.key_prefix, settings.default_tenant, session)
            docs = [json.loads(d) for d in client.lrange(keys.history, 0, -1)]
            out[session] = [(d["type"], d["data"]["content"]) for d in docs]
        return out
    finally:
        client.close()


def _prompts_of(server: ModelServer, sessions: set[str]) -> list[list[dict[str, str]]]:
    from tests.support.checker import conversation_of

    return [p.messages for p in server.state.prompts if conversation_of(p.messages) in sessions]


@pytest.mark.parametrize(
    ("clients", "turns"),
    [(100, 5), pytest.param(600, 10, marks=[pytest.mark.slow, pytest.mark.timeout(900)])],
)
def test_a_hundred_concurrent_users_each_see_only_their_own_conversation(
    cluster: Cluster, model_server: ModelServer, clients: int, turns: int
) -> None:
    sessions = [f"user-{clients}-{i:03d}" for i in range(clients)]
    sent: dict[str, list[str]] = {s: [] for s in sessions}
    statuses: dict[str, str] = {}

    async def one_user(http: httpx.AsyncClient, session: str) -> None:
        turn_ids = []
        for n in range(turns):
            content = message_for(session, n)
            turn = await _post(http, session, content)
            assert turn["seq"] == n + 1  # acceptance order is this client's sending order
            sent[session].append(content)
            turn_ids.append(str(turn["id"]))
        for turn_id in turn_ids:
            statuses[turn_id] = await _finish(http, session, turn_id)

    async def everyone() -> None:
        # Idle connections are dropped before the server's keep-alive timeout (5 s) can
        # close them under a client that is slow to reuse them.
        limits = httpx.Limits(max_connections=clients * 2, keepalive_expiry=2)
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60, limits=limits) as http:
            await asyncio.gather(*(one_user(http, s) for s in sessions))

    asyncio.run(everyone())

    observation = Observation(
        sent=sent,
        prompts=_prompts_of(model_server, set(sessions)),
        histories=_histories(cluster, sessions),
        statuses=statuses,
        window=cluster.settings.history_window,
    )
    assert len(observation.prompts) == clients * turns  # one model call per turn, no more
    assert check(observation) == []


def test_twenty_concurrent_turns_in_one_session_commit_in_acceptance_order_one_at_a_time(
    cluster: Cluster, model_server: ModelServer
) -> None:
    session = "crowded-session"
    contents = [message_for(session, n) for n in range(20)]

    async def burst() -> list[dict[str, object]]:
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as http:
            accepted = await asyncio.gather(*(_post(http, session, c) for c in contents))
            for turn in accepted:
                assert await _finish(http, session, str(turn["id"])) == "completed"
            return list(accepted)

    accepted = asyncio.run(burst())
    in_acceptance_order = [
        str(t["input"]["content"])  # type: ignore[index]
        for t in sorted(accepted, key=lambda t: int(t["seq"]))  # type: ignore[arg-type]
    ]
    assert sorted(int(t["seq"]) for t in accepted) == list(range(1, 21))  # type: ignore[arg-type]

    observation = Observation(
        sent={session: in_acceptance_order},
        prompts=_prompts_of(model_server, {session}),
        histories=_histories(cluster, [session]),
        window=cluster.settings.history_window,
    )
    assert check(observation) == []
    assert model_server.state.max_in_flight[session] == 1


def test_a_waited_answer_is_exactly_the_stored_turn(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.base_url, timeout=30) as http:
        waited = http.post("/v1/sessions/waiter/turns?wait=20", json={"content": "hi"})
        assert waited.status_code == 200, waited.text
        assert waited.json()["status"] == "completed"
        stored = http.get(waited.headers["location"])
        assert stored.json() == waited.json()


def test_the_same_session_ids_in_two_tenants_stay_two_sets_of_conversations(
    cluster: Cluster, model_server: ModelServer
) -> None:
    settings = cluster.settings
    tenants = ("acme", "globex")
    sids = [f"shared-{i:02d}" for i in range(30)]

    async def make_keys(ring: KeyRing) -> dict[str, str]:
        return {t: (await ring.create(t))[1] for t in tenants}

    keys = with_ring(settings.redis_url, settings.key_prefix, make_keys)
    labels = {(t, s): f"{t}.{s}" for t in tenants for s in sids}  # the checker's session names
    sent: dict[str, list[str]] = {label: [] for label in labels.values()}
    statuses: dict[str, str] = {}

    async def one_user(http: httpx.AsyncClient, tenant: str, sid: str) -> None:
        auth = {"Authorization": f"Bearer {keys[tenant]}"}
        ids = []
        for n in range(3):
            content = message_for(labels[tenant, sid], n)
            response = await _send(
                http, "POST", f"/v1/sessions/{sid}/turns", json={"content": content},
                headers={**auth, "Idempotency-Key": content[-16:]},
            )  # fmt: skip
            assert response.status_code == 202, response.text
            assert response.json()["seq"] == n + 1
            sent[labels[tenant, sid]].append(content)
            ids.append(response.json()["id"])
        for turn_id in ids:
            url = f"/v1/sessions/{sid}/turns/{turn_id}"
            response = await _send(http, "GET", url, params={"wait": 30}, headers=auth)
            statuses[f"{tenant}/{turn_id}"] = response.json()["status"]

    async def everyone() -> None:
        limits = httpx.Limits(max_connections=120, keepalive_expiry=2)
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60, limits=limits) as http:
            await asyncio.gather(*(one_user(http, t, s) for t, s in labels))

    try:
        asyncio.run(everyone())
    finally:
        redis.Redis.from_url(settings.redis_url).delete(f"{settings.key_prefix}:apikeys")

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        histories = {}
        for (tenant, sid), label in labels.items():
            session_keys = SessionKeys(settings.key_prefix, tenant, sid)
            docs = [json.loads(d) for d in client.lrange(session_keys.history, 0, -1)]
            histories[label] = [(d["type"], d["data"]["content"]) for d in docs]
    finally:
        client.close()
    observation = Observation(
        sent=sent,
        prompts=_prompts_of(model_server, set(labels.values())),
        histories=histories,
        statuses=statuses,
        window=settings.history_window,
    )
    assert len(observation.prompts) == len(labels) * 3
    assert check(observation) == []
