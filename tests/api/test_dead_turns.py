"""``/v1/turns/dead-letters``: a tenant's poison turns, listed newest first in pages that
lose nothing, and taken off the list one by one."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from shared.redis import async_client
from shared.settings import Settings
from shared.store.dead_turns import DeadTurns
from shared.store.records import Turn


def _bury(settings: Settings, tenant: str, session: str, n: int) -> list[str]:
    async def work() -> list[str]:
        client = async_client(settings.redis_url)
        try:
            dead = DeadTurns(client, settings.key_prefix)
            ids = []
            for i in range(n):
                turn = Turn.model_validate(
                    {"id": f"turn_{session}{i}", "session_id": session, "kind": "message",
                     "seq": i + 1, "status": "failed", "attempt": 3,
                     "input": {"content": f"poison {i}"}, "created_at": 0}
                )  # fmt: skip
                error = {"code": "attempts_exhausted", "message": "started 3 times"}
                ids.append((await dead.bury(tenant, turn, error)).turn_id)
            return ids
        finally:
            await client.aclose()

    return asyncio.run(work())


def test_poison_turns_are_listed_newest_first_in_pages_and_taken_off_one_by_one(
    api: TestClient, settings: Settings
) -> None:
    ids = _bury(settings, settings.default_tenant, "s-1", 5)
    _bury(settings, "someone-else", "s-1", 2)

    first = api.get("/v1/turns/dead-letters", params={"limit": 3}).json()
    assert first["has_more"] is True and len(first["data"]) == 3
    rest = api.get(
        "/v1/turns/dead-letters", params={"limit": 3, "before": first["next_before"]}
    ).json()
    listed = [d["turn_id"] for d in first["data"] + rest["data"]]
    assert sorted(listed) == sorted(ids) and len(set(listed)) == 5 and rest["has_more"] is False
    shown = first["data"][0]
    assert shown["session_id"] == "s-1" and shown["error"]["code"] == "attempts_exhausted"
    assert shown["input"]["content"].startswith("poison") and shown["attempts"] == 3

    assert api.delete(f"/v1/turns/dead-letters/{ids[0]}").status_code == 204
    again = api.delete(f"/v1/turns/dead-letters/{ids[0]}")
    assert again.status_code == 404
    assert again.headers["content-type"].startswith("application/problem+json")
    left = api.get("/v1/turns/dead-letters").json()["data"]
    assert ids[0] not in {d["turn_id"] for d in left} and len(left) == 4
