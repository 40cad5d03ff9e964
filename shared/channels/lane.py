"""Reply lanes: the replies each messaging chat is owed, in order, and their sending.

A chat is one session, so its lane is a list under the session's hash tag. Replies join
it from the outbox the commit script wrote (``route.lua``, in the same step that drops
each outbox message: a reply is queued once, and only for a committed turn), or once
for a platform message that became no turn (``reply_once.lua``). A sender claims a
session from ``replies_due`` (a claim is a lease), sends the lane's head, and settles it
(``settle.lua``): dropped once sent or given up (then kept as a dead letter), or stored
with its attempts and the session made due again later. One reply of a chat is in flight
at a time, so replies reach the chat in the order their turns committed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.channels.endpoints import ChannelEndpoint
from shared.channels.platform import Route
from shared.channels.split import split
from shared.keys import SessionKeys, parse_member
from shared.store.paging import cursor, newest_first
from shared.store.records import Turn, now_ms
from shared.store.store import SessionStore


class Reply(BaseModel):
    """One message to send to one chat (a long reply is several, ``part`` of ``parts``)."""

    id: str  # the outbox message's id and the part: the same on every attempt
    tenant: str
    session: str
    endpoint_id: str
    chat: str
    thread: str | None = None
    via: str | None = None
    text: str
    turn_id: str | None = None
    part: int = 1
    parts: int = 1
    attempts: int = 0
    created_at: int
    last_error: str | None = None
    dead_at: int | None = None

    @property
    def route(self) -> Route:
        return Route(self.chat, self.thread, self.via)

    @property
    def cursor(self) -> str | None:
        """A dead reply's place in its tenant's list (the next page's ``before``)."""
        return None if self.dead_at is None else cursor(self.dead_at, self.id)


def replies_for(endpoint: ChannelEndpoint, turn: Turn, msg_id: str) -> list[Reply]:
    """What a finished channel turn owes its chat: its answer (split at the platform's
    limit), or the endpoint's ``failure_reply``. Nothing for a turn another turn's call
    answered (coalesced: one reply per model call), nor for a cancelled one."""
    route = turn.channel
    if route is None or turn.answered_by is not None:
        return []
    if turn.status == "completed" and turn.output is not None:
        text = turn.output.content
    elif turn.status == "failed" and endpoint.failure_reply:
        text = endpoint.failure_reply
    else:
        return []
    parts = split(text, endpoint.platform.max_chars)
    now = now_ms()
    return [
        Reply(
            id=f"{msg_id}:{i}",
            tenant=endpoint.tenant,
            session=turn.session_id,
            endpoint_id=endpoint.id,
            chat=route.chat,
            thread=route.thread,
            via=route.via,
            text=part,
            turn_id=turn.id,
            part=i,
            parts=len(parts),
            created_at=now,
        )
        for i, part in enumerate(parts, 1)
    ]


class Lane:
    """The reply lanes of every session; asyncio, on the store's client."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._client = store.client
        self._keys = store.globals

    # -- queueing -------------------------------------------------------------------------

    async def route(self, keys: SessionKeys, handled: list[tuple[str, list[Reply]]]) -> None:
        """Drop the handled outbox messages (``(msg id, the replies it owes)``, in order)
        and queue their replies, atomically; one already dropped is skipped."""
        args = {
            "handled": [
                {"msg": msg, "replies": [r.model_dump_json() for r in replies]}
                for msg, replies in handled
            ],
            "ttl_ms": self.store.settings.session_ttl_ms,
        }
        await self.store.scripts.route(self._client, [keys.outbox, keys.replies], args)
        if any(replies for _, replies in handled):
            await self.queued(keys)

    async def reply_once(self, keys: SessionKeys, message: str, reply: Reply) -> bool:
        """Queue ``reply`` unless one was already queued for platform ``message``."""
        args = {"reply": reply.model_dump_json(), "ttl_ms": self.store.settings.session_ttl_ms}
        queued = await self.store.scripts.reply_once(
            self._client, [keys.seen(message), keys.replies], args
        )
        if queued:
            await self.queued(keys)
        return bool(queued)

    async def queued(self, keys: SessionKeys) -> None:
        """A reply joined the lane: the session is due now (or when the chat's pace
        allows), unless it is already on the schedule (claimed by a sender, which looks
        again once it settles its reply, or due later: a backoff): a sender's claim is
        never cut short."""
        wait = await self._client.pttl(keys.reply_pace)
        at = now_ms() + max(int(wait), 0)
        await self._client.zadd(self._keys.replies_due, {keys.member: at}, nx=True)

    async def _due(self, keys: SessionKeys, at_ms: int) -> None:
        """Only for the sender holding the session's claim."""
        await self._client.zadd(self._keys.replies_due, {keys.member: at_ms})

    # -- sending --------------------------------------------------------------------------

    async def claim(self, limit: int, lease_ms: int) -> list[tuple[SessionKeys, str]]:
        """Up to ``limit`` due sessions, each held for ``lease_ms``, with its claim."""
        reply = await self.store.scripts.claim(
            self._client,
            [self._keys.replies_due],
            {"now_ms": now_ms(), "lease_ms": lease_ms, "limit": limit},
        )
        return [
            (self.store.keys(*parse_member(m)), c)
            for m, c in zip(reply[::2], reply[1::2], strict=True)
        ]

    async def head(self, keys: SessionKeys) -> Reply | None:
        raw = await self._client.lindex(keys.replies, 0)
        return Reply.model_validate_json(raw) if raw else None

    async def release(self, keys: SessionKeys, claimed: str) -> None:
        """The lane looked empty: the session leaves the schedule, unless a reply was
        queued since it was claimed."""
        await self.store.scripts.forget(
            self._client, [self._keys.replies_due], {"member": keys.member, "score": claimed}
        )
        if await self._client.llen(keys.replies):
            await self.queued(keys)

    async def sent(self, keys: SessionKeys, claimed: str, reply: Reply, pace_ms: int) -> None:
        """``reply`` reached the chat; its next reply may go ``pace_ms`` later. With more
        queued, the session is due then; with none, it leaves the schedule and the pace
        is kept beside the lane, for a reply queued meanwhile (``queued``)."""
        left = await self._settle(keys, reply, drop=True)
        if left > 0:
            await self._due(keys, now_ms() + pace_ms)
        elif left == 0:
            if pace_ms > 0:
                await self._client.set(keys.reply_pace, 1, px=pace_ms)
            await self.release(keys, claimed)

    async def later(self, keys: SessionKeys, reply: Reply, at_ms: int) -> None:
        """Try ``reply`` again (as it now stands: attempts, last error) at ``at_ms``."""
        if await self._settle(keys, reply, drop=False) >= 0:
            await self._due(keys, at_ms)

    async def bury(self, keys: SessionKeys, reply: Reply, error: str) -> None:
        """Give ``reply`` up: it becomes a dead letter; the chat's next reply goes on."""
        reply.last_error, reply.dead_at = error, now_ms()
        left = await self._settle(keys, reply, drop=True)
        if left < 0:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self._keys.reply_dead_letters(reply.tenant), reply.id, reply.model_dump_json())
        pipe.zadd(self._keys.reply_dead_index(reply.tenant), {reply.id: reply.dead_at})
        pipe.zadd(self._keys.replies_due, {keys.member: now_ms()})
        await pipe.execute()

    async def _settle(self, keys: SessionKeys, reply: Reply, *, drop: bool) -> int:
        args = {"id": reply.id, "reply": "" if drop else reply.model_dump_json()}
        return int(await self.store.scripts.settle(self._client, [keys.replies], args))

    # -- a platform's pause ---------------------------------------------------------------

    async def pause(self, endpoint_id: str, seconds: float) -> None:
        """The platform asked this bot to wait (429): no sender sends for it meanwhile."""
        until = now_ms() + int(seconds * 1000)
        await self._client.set(
            self._keys.channel_paused(endpoint_id), until, px=max(int(seconds * 1000), 1)
        )

    async def paused_until(self, endpoint_id: str) -> int:
        raw = await self._client.get(self._keys.channel_paused(endpoint_id))
        return int(raw) if raw else 0

    # -- dead letters ---------------------------------------------------------------------

    async def dead_letters(
        self, tenant: str, *, limit: int, before: str | None = None
    ) -> tuple[list[Reply], bool]:
        """A tenant's dead replies, newest first, ``limit`` at a time after the cursor
        ``before`` (``Reply.cursor`` of the last one seen)."""
        ids, more = await newest_first(
            self._client, self._keys.reply_dead_index(tenant), limit=limit, before=before
        )
        hash_key = self._keys.reply_dead_letters(tenant)
        raws: list[Any] = await self._client.hmget(hash_key, ids) if ids else []
        return [Reply.model_validate_json(r) for r in raws if r], more

    async def replay(self, tenant: str, reply_id: str) -> Reply | None:
        """A dead reply queued again, from its first attempt, at the end of its chat's
        lane (after whatever the chat was sent since). Taking it off the dead letters is
        the step that decides: of two replays at once, one queues it."""
        hash_key = self._keys.reply_dead_letters(tenant)
        raw = await self._client.hget(hash_key, reply_id)
        if raw is None or not await self._client.hdel(hash_key, reply_id):
            return None  # none, or another replay took it first
        reply = Reply.model_validate_json(raw)
        reply.attempts, reply.dead_at, reply.last_error = 0, None, None
        keys = self.store.keys(reply.tenant, reply.session)
        pipe = self._client.pipeline(transaction=False)
        pipe.rpush(keys.replies, reply.model_dump_json())
        pipe.pexpire(keys.replies, self.store.settings.session_ttl_ms)
        pipe.zrem(self._keys.reply_dead_index(tenant), reply_id)
        await pipe.execute()
        await self.queued(keys)
        return reply
