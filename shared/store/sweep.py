"""The store's side of the sweeper: which sessions have pending turns and no live lock
holder, and which quiet sessions can leave the index of active sessions."""

from __future__ import annotations

from typing import Any

from shared.keys import SessionKeys, parse_member
from shared.store.records import now_ms
from shared.store.store import SessionStore

MAX_REWAKE_WAIT_MS = 15 * 60 * 1000
BATCH = 500


def _raw_score(value: bytes | str) -> str:
    """The score exactly as Redis printed it, as ``forget.lua`` will see it from ZSCORE."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Sweep:
    """One sweeper's memory between passes: sessions seen idle, by the score they had."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._idle: dict[str, str] = {}

    async def elect(self, hold_ms: int) -> bool:
        """True when this process may sweep now (one sweeper per ``hold_ms`` across hosts)."""
        return bool(
            await self._store.client.set(self._store.globals.sweeper, "1", nx=True, px=hold_ms)
        )

    async def once(self, held: frozenset[str] = frozenset()) -> list[SessionKeys]:
        """One pass over the sessions not accepted into lately; returns those to wake.

        ``held``: sessions whose lock this process holds and renews (``tenant:session``):
        known to be drained, so not probed.

        Sessions accepted into within two sweep intervals are not even read: their own
        wake-up is fresh. A stalled session is returned at most once per backoff period
        (``rewake.lua``). A session leaves the index only when two passes in a row saw it
        idle (no lock, nothing pending) with the same score, and ``forget.lua`` confirms
        the score is still unchanged: no clock comparison between hosts is involved.
        """
        store = self._store
        client, scripts, settings = store.client, store.scripts, store.settings
        index = store.globals.active
        cutoff = now_ms() - int(settings.sweep_interval_s * 1000) * 2
        idle: dict[str, str] = {}
        forget: list[tuple[str, str]] = []
        stalled: list[SessionKeys] = []
        unsent: list[SessionKeys] = []
        unreplied: list[SessionKeys] = []
        offset = 0
        while True:
            batch = await client.zrange(
                index, "-inf", cutoff, byscore=True, offset=offset, num=BATCH,
                withscores=True, score_cast_func=_raw_score,
            )  # fmt: skip
            offset += len(batch)
            read = len(batch)
            batch = [(member, score) for member, score in batch if member not in held]
            sessions = [store.keys(*parse_member(member)) for member, _ in batch]
            states: list[int] = []
            if sessions:
                pipe = client.pipeline(transaction=False)
                for keys in sessions:
                    pipe.exists(keys.lock)
                    pipe.llen(keys.mailbox)
                    pipe.llen(keys.outbox)
                    pipe.llen(keys.replies)
                states = await pipe.execute()
            for i, (member, score) in enumerate(batch):
                locked, pending, outbox, replies = states[4 * i : 4 * i + 4]
                if outbox:  # the committer died before noting it: a sender must look
                    unsent.append(sessions[i])
                if replies:
                    unreplied.append(sessions[i])
                if locked:
                    continue  # a live holder drains it
                if pending:
                    stalled.append(sessions[i])
                elif outbox or replies:
                    continue  # not idle until they are sent
                elif self._idle.get(member) == score:
                    forget.append((member, score))
                else:
                    idle[member] = score
            if read < BATCH:
                break
        self._idle = idle
        if unsent:
            await client.zadd(
                store.globals.outbox_index, {k.member: now_ms() for k in unsent}, nx=True
            )
        if unreplied:  # the router died before scheduling them, or they wait their turn
            await client.zadd(
                store.globals.replies_due, {k.member: now_ms() for k in unreplied}, nx=True
            )
        if not forget and not stalled:
            return []

        def fill(pipe: Any) -> None:
            for member, score in forget:
                scripts.forget.queue(pipe, [index], {"member": member, "score": score})
            for keys in stalled:
                scripts.rewake.queue(
                    pipe,
                    [keys.woken, keys.meta],
                    {"base_ms": settings.lock_ttl_ms, "max_ms": MAX_REWAKE_WAIT_MS},
                )

        results = await store.run_pipeline(fill)
        return [
            keys for keys, allowed in zip(stalled, results[len(forget) :], strict=True) if allowed
        ]
