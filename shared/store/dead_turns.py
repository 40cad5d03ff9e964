"""Poison turns: turns failed because every worker that started them died on them (a
crash, an out-of-memory kill), kept per tenant for an operator to look at and send again.

The turn itself is already committed ``failed`` (``attempts_exhausted``) and its session
has moved on; this list is where it can be found without knowing its session. Written
after the commit, so a worker dying in between leaves the turn failed but unlisted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from shared.keys import GlobalKeys
from shared.store.paging import cursor, newest_first
from shared.store.records import Turn, now_ms

MAX_KEPT = 10_000  # per tenant; the oldest go first


class DeadTurn(BaseModel):
    """A poison turn, as its tenant's dead letters list it."""

    turn_id: str
    session_id: str
    attempts: int = Field(description="How many times a worker started it.")
    input: dict[str, Any] | None
    error: dict[str, Any] | None
    dead_at: int = Field(description="When it failed (ms since the epoch).")

    @property
    def cursor(self) -> str:
        return cursor(self.dead_at, self.turn_id)


class DeadTurns:
    """A tenant's poison turns, on the deployment's Redis client."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._keys = GlobalKeys(prefix)

    async def bury(self, tenant: str, turn: Turn, error: dict[str, Any] | None) -> DeadTurn:
        dead = DeadTurn(
            turn_id=turn.id,
            session_id=turn.session_id,
            attempts=turn.attempt,
            input=turn.input,
            error=error,
            dead_at=now_ms(),
        )
        index = self._keys.turn_dead_index(tenant)
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self._keys.turn_dead_letters(tenant), dead.turn_id, dead.model_dump_json())
        pipe.zadd(index, {dead.turn_id: dead.dead_at})
        pipe.zrange(index, 0, -MAX_KEPT - 1)
        *_, overflow = await pipe.execute()
        if overflow:
            await self.forget(tenant, *overflow)
        return dead

    async def page(
        self, tenant: str, *, limit: int, before: str | None = None
    ) -> tuple[list[DeadTurn], bool]:
        """Newest first, ``limit`` at a time after the cursor ``before``."""
        ids, more = await newest_first(
            self._client, self._keys.turn_dead_index(tenant), limit=limit, before=before
        )
        raws = await self._client.hmget(self._keys.turn_dead_letters(tenant), ids) if ids else []
        return [DeadTurn.model_validate_json(r) for r in raws if r], more

    async def take(self, tenant: str, turn_id: str) -> DeadTurn | None:
        """Remove one from the list (to send it again); None when it is not there."""
        raw = await self._client.hget(self._keys.turn_dead_letters(tenant), turn_id)
        if raw is None:
            return None
        await self.forget(tenant, turn_id)
        return DeadTurn.model_validate_json(raw)

    async def forget(self, tenant: str, *turn_ids: str) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.hdel(self._keys.turn_dead_letters(tenant), *turn_ids)
        pipe.zrem(self._keys.turn_dead_index(tenant), *turn_ids)
        await pipe.execute()
