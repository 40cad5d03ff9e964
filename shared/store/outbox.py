"""Webhooks in Redis: each tenant's endpoints and signing secrets, the outbox the commit
script writes, deliveries with their attempts, and dead letters.

A delivery exists only because ``commit.lua`` wrote an outbox message in the same step
that committed a turn: never for an uncommitted or fenced-out turn, and one message per
commit. A sender turns each message into one delivery per target (the turn's own
``webhook`` URL, every endpoint of the tenant that takes the event), sends them at least
once, and a receiver drops repeats by ``webhook-id``, which is the message's and the same
on every attempt. Moving a message into deliveries is not atomic (the outbox belongs to a
session's slot, deliveries to none): a sender that dies halfway leaves the message,
which becomes the same deliveries again — at least once, never lost.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from shared.channels.endpoints import Directory
from shared.channels.lane import Lane, Reply, replies_for
from shared.keys import SessionKeys, parse_member
from shared.recent import Recent
from shared.signing import new_secret
from shared.store.paging import cursor, newest_first
from shared.store.records import Turn, now_ms
from shared.store.store import SessionStore

EventName = Literal["turn.completed", "turn.failed", "turn.cancelled"]
EVENTS: tuple[EventName, ...] = ("turn.completed", "turn.failed", "turn.cancelled")
SIGNING = "_signing"  # the field of a tenant's hash holding its signing secrets
CACHE_S = 2.0


class Secret(BaseModel):
    value: str
    expires_at: int | None = None  # ms; a rotated-out secret signs until then

    def live(self, now: int) -> bool:
        return self.expires_at is None or self.expires_at > now


def live_values(secrets_: list[Secret], now: int) -> list[str]:
    """The secrets that still sign, newest first."""
    return [s.value for s in secrets_ if s.live(now)]


def rotated(secrets_: list[Secret], new: str, now: int, grace_ms: int) -> list[Secret]:
    """``new`` first, then the secrets that still sign, each signing ``grace_ms`` more at
    the most (receivers switch over meanwhile); expired ones are dropped."""
    kept = [
        Secret(value=s.value, expires_at=s.expires_at or now + grace_ms)
        for s in secrets_
        if s.live(now)
    ]
    return [Secret(value=new), *kept]


class Endpoint(BaseModel):
    """A URL that receives a tenant's webhook events."""

    id: str
    url: str
    events: list[EventName] = Field(default_factory=lambda: list(EVENTS))
    disabled: bool = False
    disabled_reason: str | None = None
    created_at: int
    secrets: list[Secret] = Field(default_factory=list)

    def live_secrets(self, now: int) -> list[str]:
        return live_values(self.secrets, now)


class Delivery(BaseModel):
    """One message for one target, with its attempts so far."""

    id: str
    msg_id: str
    type: EventName
    tenant: str
    session: str
    turn_id: str
    url: str
    endpoint_id: str | None = None
    payload: str
    attempts: int = 0
    created_at: int
    last_error: str | None = None
    dead_at: int | None = None

    @property
    def cursor(self) -> str | None:
        """A dead letter's place in its tenant's list (the next page's ``before``)."""
        return None if self.dead_at is None else cursor(self.dead_at, self.id)


class Outbox:
    """The webhook side of the store; asyncio, one per process."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._client = store.client
        self._keys = store.globals
        self._endpoints: Recent[list[Endpoint]] = Recent(CACHE_S)
        self.directory = Directory(store.client, store.globals)
        self.lane = Lane(store)

    # -- endpoints and secrets ------------------------------------------------------------

    async def endpoints(self, tenant: str, *, fresh: bool = False) -> list[Endpoint]:
        cached = None if fresh else self._endpoints.get(tenant)
        if cached is not None:
            return cached
        raw = await self._client.hgetall(self._keys.endpoints(tenant))
        found = sorted(
            (Endpoint.model_validate_json(v) for k, v in raw.items() if k != SIGNING),
            key=lambda e: e.created_at,
        )
        self._endpoints.put(tenant, found)
        return found

    async def endpoint(self, tenant: str, endpoint_id: str) -> Endpoint | None:
        raw = await self._client.hget(self._keys.endpoints(tenant), endpoint_id)
        return Endpoint.model_validate_json(raw) if raw else None

    async def save_endpoint(self, tenant: str, endpoint: Endpoint) -> None:
        await self._client.hset(
            self._keys.endpoints(tenant), endpoint.id, endpoint.model_dump_json()
        )
        self._endpoints.drop(tenant)

    async def remove_endpoint(self, tenant: str, endpoint_id: str) -> bool:
        self._endpoints.drop(tenant)
        return bool(await self._client.hdel(self._keys.endpoints(tenant), endpoint_id))

    async def subscribed(self, tenant: str, event: EventName) -> bool:
        """Whether some enabled endpoint of the tenant takes ``event``."""
        endpoints = await self.endpoints(tenant)
        return any(event in e.events and not e.disabled for e in endpoints)

    async def signing_secrets(self, tenant: str, *, create: bool = False) -> list[Secret]:
        """The secrets that sign deliveries to turns' own ``webhook`` URLs."""
        key = self._keys.endpoints(tenant)
        raw = await self._client.hget(key, SIGNING)
        if raw is None and create:
            fresh = [Secret(value=new_secret())]
            await self._client.hsetnx(key, SIGNING, _dump_secrets(fresh))
            raw = await self._client.hget(key, SIGNING)
        if raw is None:
            return []
        return [Secret.model_validate(s) for s in orjson.loads(raw)]

    async def rotate_signing_secret(self, tenant: str, grace_ms: int) -> list[Secret]:
        secrets_ = rotated(await self.signing_secrets(tenant), new_secret(), now_ms(), grace_ms)
        await self._client.hset(self._keys.endpoints(tenant), SIGNING, _dump_secrets(secrets_))
        return secrets_

    # -- from commit to deliveries --------------------------------------------------------

    async def note(self, keys: SessionKeys) -> None:
        """A commit just wrote an outbox message in this session: have a sender look."""
        await self._client.zadd(self._keys.outbox_index, {keys.member: now_ms()})

    async def claim(self, schedule: str, limit: int, lease_ms: int) -> list[tuple[str, str]]:
        """Up to ``limit`` due members of a schedule, each held for ``lease_ms``."""
        reply = await self.store.scripts.claim(
            self._client, [schedule], {"now_ms": now_ms(), "lease_ms": lease_ms, "limit": limit}
        )
        return list(zip(reply[::2], reply[1::2], strict=True))

    async def claim_sessions(self, limit: int, lease_ms: int) -> list[tuple[str, str]]:
        return await self.claim(self._keys.outbox_index, limit, lease_ms)

    async def expand(self, member: str, claimed: str) -> int:
        """Turn the session's outbox messages into deliveries, and the replies its
        messaging chat is owed into its reply lane; returns how many messages.

        The session leaves the index only if no commit noted it since it was claimed.
        """
        tenant, session = parse_member(member)
        keys = self.store.keys(tenant, session)
        messages = await self._client.lrange(keys.outbox, 0, -1)
        now = now_ms()
        handled: list[tuple[str, list[Reply]]] = []
        endpoints = await self.endpoints(tenant, fresh=True) if messages else []
        for raw in messages:
            message = orjson.loads(raw)
            replies: list[Reply] = []
            handled.append((message["msg"], replies))
            raw_turn = await self._client.hget(keys.turns, message["turn_id"])
            if raw_turn is None:
                continue
            turn = Turn.from_json(raw_turn)
            deliveries = self._deliveries_for(tenant, session, message, turn, endpoints, now)
            if deliveries:
                pipe = self._client.pipeline(transaction=False)
                for delivery in deliveries:
                    self._schedule(pipe, delivery, now)
                await pipe.execute()
            if turn.channel is not None:  # replies_for judges what the turn is owed
                endpoint = await self.directory.find(turn.channel.endpoint_id)
                if endpoint is not None:
                    replies += replies_for(endpoint, turn, message["msg"])
        if handled:
            await self.lane.route(keys, handled)
        await self.store.scripts.forget(
            self._client, [self._keys.outbox_index], {"member": member, "score": claimed}
        )
        if await self._client.llen(keys.outbox):  # a commit came in between
            await self.note(keys)
        return len(messages)

    def _deliveries_for(
        self,
        tenant: str,
        session: str,
        message: dict[str, Any],
        turn: Turn,
        endpoints: list[Endpoint],
        now: int,
    ) -> list[Delivery]:
        event: EventName = message["type"]
        targets: list[tuple[str, str | None]] = []
        if turn.webhook:
            targets.append((turn.webhook, None))
        for endpoint in endpoints:
            if event in endpoint.events and not endpoint.disabled:
                targets.append((endpoint.url, endpoint.id))
        if not targets:
            return []
        body = orjson.dumps(
            {
                "type": event,
                "timestamp": turn.finished_at.isoformat() if turn.finished_at else None,
                "data": turn.model_dump(mode="json"),
            }
        ).decode()
        msg_id = message["msg"]
        return [
            Delivery(
                id=f"{msg_id}:{endpoint_id or 'turn'}",
                msg_id=msg_id,
                type=event,
                tenant=tenant,
                session=session,
                turn_id=turn.id,
                url=url,
                endpoint_id=endpoint_id,
                payload=body,
                created_at=now,
            )
            for url, endpoint_id in targets
        ]

    # -- deliveries -----------------------------------------------------------------------

    async def claim_deliveries(self, limit: int, lease_ms: int) -> list[Delivery]:
        claimed = await self.claim(self._keys.deliveries_due, limit, lease_ms)
        if not claimed:
            return []
        raws = await self._client.hmget(self._keys.deliveries, [d for d, _ in claimed])
        found = [Delivery.model_validate_json(r) for r in raws if r is not None]
        missing = [d for (d, _), r in zip(claimed, raws, strict=True) if r is None]
        if missing:
            await self._client.zrem(self._keys.deliveries_due, *missing)
        return found

    def _schedule(self, pipe: Any, delivery: Delivery, at_ms: int) -> None:
        """Store ``delivery`` as it stands and make it due at ``at_ms``."""
        pipe.hset(self._keys.deliveries, delivery.id, delivery.model_dump_json())
        pipe.zadd(self._keys.deliveries_due, {delivery.id: at_ms})

    def _unschedule(self, pipe: Any, delivery_id: str) -> None:
        pipe.zrem(self._keys.deliveries_due, delivery_id)
        pipe.hdel(self._keys.deliveries, delivery_id)

    async def delivered(self, delivery: Delivery) -> None:
        pipe = self._client.pipeline(transaction=False)
        self._unschedule(pipe, delivery.id)
        await pipe.execute()

    async def retry_at(self, delivery: Delivery, at_ms: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        self._schedule(pipe, delivery, at_ms)
        await pipe.execute()

    async def bury(self, delivery: Delivery) -> None:
        """Move a delivery to its tenant's dead letters."""
        delivery.dead_at = now_ms()
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self._keys.dead_letters(delivery.tenant), delivery.id, delivery.model_dump_json())
        pipe.zadd(self._keys.dead_index(delivery.tenant), {delivery.id: delivery.dead_at})
        self._unschedule(pipe, delivery.id)
        await pipe.execute()

    async def dead_letters(
        self, tenant: str, *, limit: int, before: str | None = None
    ) -> tuple[list[Delivery], bool]:
        """A tenant's dead letters, newest first, ``limit`` at a time after the cursor
        ``before`` (``Delivery.cursor`` of the last one seen, or a time in ms)."""
        ids, more = await newest_first(
            self._client, self._keys.dead_index(tenant), limit=limit, before=before
        )
        raws = await self._client.hmget(self._keys.dead_letters(tenant), ids) if ids else []
        return [Delivery.model_validate_json(r) for r in raws if r], more

    async def replay(self, tenant: str, delivery_id: str) -> Delivery | None:
        """A dead letter sent again from its first attempt (same ``webhook-id``)."""
        raw = await self._client.hget(self._keys.dead_letters(tenant), delivery_id)
        if raw is None:
            return None
        delivery = Delivery.model_validate_json(raw)
        delivery.attempts, delivery.dead_at, delivery.last_error = 0, None, None
        pipe = self._client.pipeline(transaction=False)
        self._schedule(pipe, delivery, now_ms())
        pipe.hdel(self._keys.dead_letters(tenant), delivery_id)
        pipe.zrem(self._keys.dead_index(tenant), delivery_id)
        await pipe.execute()
        return delivery


def _dump_secrets(secrets_: list[Secret]) -> str:
    return orjson.dumps([s.model_dump() for s in secrets_]).decode()
