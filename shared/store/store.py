"""The session store: the only code that knows session keys and scripts.

Each operation a turn has is one method here, and each write is one Lua script, so a
session's queue, history, turn records, events and lock only ever change together.
All I/O is asyncio; one store (and one client) serves a whole process.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from typing import Any, Literal

import orjson
from redis.exceptions import NoScriptError

from shared.errors import (
    CommitRejected,
    HistoryFull,
    IdempotencyConflict,
    MailboxFull,
    SessionActive,
    SessionBusy,
    SessionNotFound,
    TurnNotFound,
)
from shared.keys import GlobalKeys, SessionKeys
from shared.settings import Settings, Strategy
from shared.store.defaults import TurnDefaults
from shared.store.packed import send_packed
from shared.store.records import ChannelRoute, Event, Session, Turn, now_ms, queued_record
from shared.store.results import Accepted, Cancelled, Debounce, Head, Outcome, Page
from shared.store.scripts import Scripts

Order = Literal["asc", "desc"]
ACTIVE = frozenset({"queued", "running"})
EVENTS_PAGE = 512  # events read from a session's stream at a time


def _turn_keys(keys: SessionKeys) -> list[str]:
    """KEYS[1..7] of ``begin.lua`` and ``commit.lua``, in their order."""
    return [
        keys.lock,
        keys.mailbox,
        keys.history,
        keys.meta,
        keys.turns,
        keys.turn_index,
        keys.events,
    ]


def new_turn_id() -> str:
    return f"turn_{secrets.token_hex(12)}"


def fingerprint(kind: str, input_json: bytes) -> str:
    """What an ``Idempotency-Key`` is bound to: the operation and its exact input."""
    return hashlib.sha256(kind.encode() + b"\n" + input_json).hexdigest()[:32]


class SessionStore:
    """Accept, begin, commit, read, list and clear turns of any session; asyncio.

    Takes a client, never a URL (the caller owns the client). ``client`` must answer
    with ``str`` (``decode_responses=True``).
    """

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.scripts = Scripts.load()
        self.globals = GlobalKeys(settings.key_prefix)

    def keys(self, tenant: str, session: str) -> SessionKeys:
        return SessionKeys(self.settings.key_prefix, tenant, session)

    def _event_args(self, keys: SessionKeys) -> dict[str, Any]:
        return {"events_ttl_ms": self.settings.events_ttl_ms, "channel": keys.channel}

    # -- accept ---------------------------------------------------------------------------

    async def accept(
        self,
        keys: SessionKeys,
        *,
        kind: Literal["message", "clear"] = "message",
        input_doc: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        existing_only: bool = False,
        webhook: str | None = None,
        strategy: Strategy | None = None,
        debounce_s: float | None = None,
        defaults: TurnDefaults | None = None,
        announce_cancel: bool = False,
        channel: ChannelRoute | None = None,
        idempotency_ttl_s: int | None = None,
    ) -> Accepted:
        """Record a turn (``queued``) at the end of the session's mailbox, and apply its
        double-texting ``strategy`` to the turns pending before it, in the same atomic
        step. One round trip.

        ``strategy`` / ``debounce_s`` unset: the session's defaults, else ``defaults``
        (the tenant's), else the deployment's. ``announce_cancel``: turns this one cancels
        get a ``turn.cancelled`` webhook event. The session is marked active for the
        sweeper *before* the script runs (same pipeline), so the sweeper always knows of a
        session that may hold pending turns. Raises ``IdempotencyConflict``,
        ``MailboxFull``, ``HistoryFull``, ``SessionActive`` (strategy ``reject``) or (with
        ``existing_only``) ``SessionNotFound``; then nothing was queued or cancelled.
        ``channel``: the messaging chat the reply goes to; ``idempotency_ttl_s``: how
        long the key is remembered when not the deployment's setting (platforms redeliver
        for days), never past the session's lifetime.
        """
        settings = self.settings
        created = now_ms()
        turn_id = new_turn_id()
        debounce_ms = None if debounce_s is None else round(debounce_s * 1000)
        record = queued_record(
            turn_id, keys.session, kind, input_doc, created, webhook, strategy, debounce_ms,
            channel,
        )  # fmt: skip
        input_json = orjson.dumps([input_doc, webhook, strategy, debounce_ms])
        fallback = defaults or TurnDefaults()
        script_keys = [
            keys.meta,
            keys.mailbox,
            keys.turns,
            keys.turn_index,
            keys.history,
            keys.events,
            keys.lock,
            keys.idempotency(idempotency_key or ""),
            keys.outbox,
        ]
        args = {
            "turn": record,
            "fingerprint": fingerprint(kind, input_json) if idempotency_key else "",
            # Never remember a key longer than the turn it points to can live.
            "idem_ttl_ms": min(
                (idempotency_ttl_s or settings.idempotency_ttl_s) * 1000, settings.session_ttl_ms
            ),
            "max_pending": settings.max_pending_turns,
            "max_history": settings.max_history_messages,
            "existing_only": existing_only,
            "default_strategy": fallback.strategy or settings.double_texting,
            "default_debounce_ms": round(
                1000
                * (
                    settings.coalesce_debounce_s
                    if fallback.debounce_s is None
                    else fallback.debounce_s
                )
            ),
            "max_group": settings.max_coalesced_turns,
            "announce_cancel": announce_cancel,
            "member": keys.member,
            "control": self.globals.control,
            "now_ms": created,
            "session_ttl_ms": settings.session_ttl_ms,
            **self._event_args(keys),
        }

        def fill(pipe: Any) -> None:
            pipe.zadd(self.globals.active, {keys.member: created})
            self.scripts.accept.queue(pipe, script_keys, args)

        reply = await self.run_pipeline(fill)
        verdict = reply[-1]
        if verdict[0] == "OK":
            turn = Turn.model_validate(
                {
                    **record,
                    "seq": int(verdict[2]),
                    "events_from": verdict[4],
                    "strategy": verdict[5],
                    "debounce_ms": 0,
                }
            )
            cancelled = tuple((str(i), int(n)) for i, n in (orjson.loads(verdict[6]) or []))
            return Accepted(
                turn_id, replayed=False, lock_held=bool(verdict[3]), turn=turn, cancelled=cancelled
            )
        if verdict[0] == "REPLAY":
            return Accepted(str(verdict[1]), replayed=True, lock_held=True)
        if verdict[0] == "CONFLICT":
            raise IdempotencyConflict(str(verdict[1]))
        if verdict[0] == "BUSY":
            raise SessionActive(str(verdict[1]))
        if verdict[0] == "NOT_FOUND":
            raise SessionNotFound(f"No session {keys.session}.")
        if verdict[0] == "HISTORY_FULL":
            raise HistoryFull(
                f"the session holds {verdict[1]} messages (with its pending turns); the limit "
                f"is {settings.max_history_messages}: clear it (DELETE) or use a new session"
            )
        raise MailboxFull(f"{verdict[1]} turns are already pending in this session")

    async def run_pipeline(self, fill: Callable[[Any], None]) -> list[Any]:
        """One round trip: a pipeline that ``fill`` queues commands and scripts on. After
        NOSCRIPT (a restarted server) the scripts are loaded and the pipeline is sent
        again; only idempotent work may go into one (a NOSCRIPT script did not run, but
        the commands around it did)."""
        pipe = self.client.pipeline(transaction=False)
        fill(pipe)
        try:
            result: list[Any] = await pipe.execute()
        except NoScriptError:
            await self.scripts.register(self.client)
            pipe = self.client.pipeline(transaction=False)
            fill(pipe)
            result = await pipe.execute()
        return result

    async def send_packed(self, commands: Sequence[bytes]) -> list[Any]:
        """One round trip for many packed calls of scripts that answer an integer
        (``Script.pack``): each reply, or the error Redis answered it with
        (``shared.store.packed``)."""
        return await send_packed(self.client, self.scripts, commands)

    # -- the worker's side ----------------------------------------------------------------

    async def begin(self, keys: SessionKeys, token: str) -> Head | Debounce | None:
        """Take (or keep) the lock with ``token`` and the mailbox head with its coalesced
        group; ``Debounce`` when the group waits for more messages (the lock is held);
        None when nothing is pending (the lock is then released). Raises ``SessionBusy``
        when another worker holds the lock. One round trip."""
        settings = self.settings
        reply = await self.scripts.begin(
            self.client,
            [*_turn_keys(keys), keys.woken],
            {
                "token": token,
                "lock_ttl_ms": settings.lock_ttl_ms,
                "window": settings.history_window,
                "max_group": settings.max_coalesced_turns,
                "now_ms": now_ms(),
                "session_ttl_ms": settings.session_ttl_ms,
                **self._event_args(keys),
            },
        )
        if reply[0] == "BUSY":
            raise SessionBusy(keys.member)
        if reply[0] == "EMPTY":
            return None
        if reply[0] == "WAIT":
            return Debounce(int(reply[1]) / 1000, int(reply[2]))
        members = tuple(Turn.model_validate(doc) for doc in orjson.loads(reply[4]))
        return Head(
            Turn.from_json(reply[1]),
            [orjson.loads(doc) for doc in reply[5:]],
            generation=int(reply[2]),
            members=members,
            span=int(reply[3]),
        )

    async def commit(
        self, keys: SessionKeys, token: str, head: Head, outcome: Outcome, *, webhook: str = ""
    ) -> bool:
        """Fenced commit of the head and its group; True when the lock was released
        (mailbox empty).

        ``webhook``: the event to tell webhook receivers of (``turn.completed``,
        ``turn.failed``): the same script then writes the outbox messages (one per turn
        of the group), so they are written exactly when the commit is. Raises
        ``CommitRejected`` with ``NOT_OWNER``, ``STOPPED`` (the attempt was made void:
        begin again), ``DUPLICATE`` or ``OUT_OF_ORDER``; then nothing was written. One
        round trip.
        """
        settings = self.settings
        turn = head.turn
        tail = ""
        if outcome.tail:
            tail = self.delta_data(turn.attempt, outcome.tail_try, outcome.tail)
        reply = await self.scripts.commit(
            self.client,
            [*_turn_keys(keys), keys.outbox],
            {
                "token": token,
                "generation": head.generation,
                "turn_id": turn.id,
                "members": [m.id for m in head.members],
                "span": head.span,
                "status": outcome.status,
                "output": outcome.output,
                "error": outcome.error,
                "messages": [orjson.dumps(m).decode() for m in outcome.messages],
                "tail": tail,
                "webhook": webhook,
                "now_ms": now_ms(),
                "session_ttl_ms": settings.session_ttl_ms,
                "lock_ttl_ms": settings.lock_ttl_ms,
                **self._event_args(keys),
            },
        )
        if reply[0] != "OK":
            raise CommitRejected(reply[0])
        return bool(int(reply[1]))

    async def cancel(
        self,
        keys: SessionKeys,
        turn_id: str,
        *,
        announce: bool = False,
        reason: Literal["requested", "disconnected"] = "requested",
    ) -> Cancelled:
        """Cancel a queued or running turn; nothing of it is kept. A running turn's worker
        is told to stop at once, and whatever it still writes of the turn is refused. An
        already finished turn is left as it is (``changed`` False), so a repeated cancel
        answers the same. ``announce``: write a ``turn.cancelled`` webhook event. Raises
        ``TurnNotFound``. One round trip."""
        settings = self.settings
        reply = await self.scripts.cancel(
            self.client,
            [keys.meta, keys.mailbox, keys.turns, keys.events, keys.outbox, keys.lock],
            {
                "turn_id": turn_id,
                "reason": reason,
                "announce": announce,
                "member": keys.member,
                "control": self.globals.control,
                "now_ms": now_ms(),
                "session_ttl_ms": settings.session_ttl_ms,
                **self._event_args(keys),
            },
        )
        if reply[0] == "NOT_FOUND":
            raise TurnNotFound(f"No turn {turn_id} in session {keys.session}.")
        turn = Turn.from_json(reply[1])
        if reply[0] == "FINISHED":
            return Cancelled(turn, changed=False)
        return Cancelled(
            turn, changed=True, was_running=bool(int(reply[2])), orphaned=bool(int(reply[3]))
        )

    async def set_defaults(self, keys: SessionKeys, defaults: TurnDefaults) -> None:
        """Set (or, with None fields, unset) a session's double-texting defaults; the
        session is created if it was never used. One round trip."""
        now = now_ms()
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(keys.meta, "next_seq", 0)
        pipe.hsetnx(keys.meta, "created_at", now)
        pipe.hset(keys.meta, "updated_at", now)
        if defaults.strategy is None:
            pipe.hdel(keys.meta, "strategy")
        else:
            pipe.hset(keys.meta, "strategy", defaults.strategy)
        if defaults.debounce_s is None:
            pipe.hdel(keys.meta, "debounce_ms")
        else:
            pipe.hset(keys.meta, "debounce_ms", round(defaults.debounce_s * 1000))
        pipe.pexpire(keys.meta, self.settings.session_ttl_ms)
        await pipe.execute()

    @staticmethod
    def delta_data(attempt: int, try_number: int, text: str) -> str:
        """A ``delta`` event's data: the text, tagged with the attempt and model try."""
        return orjson.dumps({"attempt": attempt, "try": try_number, "text": text}).decode()

    async def append_delta(
        self, keys: SessionKeys, token: str, turn_id: str, data: str, generation: int = 0
    ) -> bool:
        """Append a delta event if ``token`` still holds the lock and its attempt (begun in
        stop ``generation``) stands; False: nothing written."""
        pack = self.delta_packer(keys, token, turn_id, generation=generation)
        [appended] = await self.send_packed([pack(data)])
        if isinstance(appended, Exception):
            raise appended
        return bool(appended == 1)

    def delta_packer(
        self,
        keys: SessionKeys,
        token: str,
        turn_id: str,
        kind: str = "delta",
        generation: int = 0,
    ) -> Callable[[str], bytes]:
        """``append_delta`` of one turn, packed for ``send_packed`` from the event's data
        (its reply: 1 appended, 0 not the lock holder, 2 the attempt begun in stop
        ``generation`` was stopped, 3 the turn was committed already). ``kind``:
        ``delta``, or ``reset`` (a try's text is abandoned)."""
        fixed = {
            "token": token,
            "generation": generation,
            "turn_id": turn_id,
            "type": kind,
            "channel": keys.channel,
        }
        return self.scripts.delta.packer(
            [keys.lock, keys.events, keys.meta, keys.mailbox], fixed, "data"
        )

    async def renew(self, leases: Sequence[tuple[SessionKeys, str, int]]) -> list[int]:
        """Extend every ``(keys, token, generation)`` lease in one pipelined round trip:
        1 renewed, 2 renewed but its attempt was stopped, 0 lost."""
        if not leases:
            return []
        ttl_ms = self.settings.lock_ttl_ms

        def fill(pipe: Any) -> None:
            for keys, token, generation in leases:
                self.scripts.extend.queue(
                    pipe,
                    [keys.lock, keys.meta],
                    {"token": token, "ttl_ms": ttl_ms, "generation": generation},
                )

        return [int(r) for r in await self.run_pipeline(fill)]

    async def release(self, keys: SessionKeys, token: str, *, force: bool = False) -> int:
        """Drop the lock: 1 released, 0 not the holder, -1 refused (turns are pending)."""
        return int(
            await self.scripts.release(
                self.client, [keys.lock, keys.mailbox], {"token": token, "force": force}
            )
        )

    # -- reading --------------------------------------------------------------------------

    async def read_turn(self, keys: SessionKeys, turn_id: str) -> Turn:
        raw = await self.client.hget(keys.turns, turn_id)
        if raw is None:
            raise TurnNotFound(f"No turn {turn_id} in session {keys.session}.")
        return Turn.from_json(raw)

    async def list_turns(
        self, keys: SessionKeys, *, limit: int, order: Order = "asc", after: int | None = None
    ) -> Page:
        """Turns by sequence number, ``limit`` at a time, strictly after seq ``after`` in
        the given order. Raises ``SessionNotFound`` for an unknown session."""
        pipe = self.client.pipeline(transaction=True)
        pipe.exists(keys.meta)
        pipe.zcard(keys.turn_index)
        bound = f"({after}" if after is not None else None
        if order == "asc":
            pipe.zrange(
                keys.turn_index, bound or "-inf", "+inf", byscore=True, offset=0, num=limit + 1
            )
        else:
            pipe.zrange(
                keys.turn_index, bound or "+inf", "-inf",
                byscore=True, desc=True, offset=0, num=limit + 1,
            )  # fmt: skip
        exists, total, ids = await pipe.execute()
        if not exists:
            raise SessionNotFound(f"No session {keys.session}.")
        page_ids = ids[:limit]
        raws = await self.client.hmget(keys.turns, page_ids) if page_ids else []
        turns = [Turn.from_json(raw) for raw in raws if raw is not None]
        return Page(turns, int(total), len(ids) > limit)

    async def events_after(
        self, keys: SessionKeys, after: str, *, count: int = EVENTS_PAGE, inclusive: bool = False
    ) -> list[Event]:
        """The session's events after entry ``after`` (``"0-0"``: from the first; from
        ``after`` itself when ``inclusive``), oldest first, at most ``count``."""
        start = after if inclusive else f"({after}"
        entries = await self.client.xrange(keys.events, start, "+", count=count)
        return [Event.from_entry(entry_id, fields) for entry_id, fields in entries]

    async def read_session(self, keys: SessionKeys) -> Session:
        pipe = self.client.pipeline(transaction=True)
        pipe.hmget(
            keys.meta,
            "next_seq", "finished", "done_seq", "created_at", "updated_at", "strategy",
            "debounce_ms",
        )  # fmt: skip
        pipe.lrange(keys.mailbox, 0, -1)
        pipe.llen(keys.history)
        pipe.xrevrange(keys.events, "+", "-", count=1)
        meta, pending, messages, newest = await pipe.execute()
        next_seq, finished, done_seq, created, updated, strategy, debounce_ms = meta
        if next_seq is None:
            raise SessionNotFound(f"No session {keys.session}.")
        if pending:  # cancelled turns whose kept message is not written yet are not pending
            raws = await self.client.hmget(keys.turns, pending)
            pending = [r for r in raws if r is not None and orjson.loads(r)["status"] in ACTIVE]
        return Session(
            id=keys.session,
            turn_count=int(next_seq),
            finished_turns=int(finished or done_seq or 0),
            pending_turns=len(pending),
            strategy=strategy,
            debounce_s=None if debounce_ms is None else int(debounce_ms) / 1000,
            message_count=int(messages),
            created_at=int(created),
            updated_at=int(updated),
            last_event_id=newest[0][0] if newest else None,
        )

    async def messages(self, keys: SessionKeys, *, offset: int, limit: int) -> Page:
        """History documents, oldest first. Raises ``SessionNotFound`` for an unknown
        session."""
        pipe = self.client.pipeline(transaction=True)
        pipe.exists(keys.meta)
        pipe.lrange(keys.history, offset, offset + limit - 1)
        pipe.llen(keys.history)
        exists, raw, total = await pipe.execute()
        if not exists:
            raise SessionNotFound(f"No session {keys.session}.")
        docs = [orjson.loads(doc) for doc in raw]
        return Page(docs, int(total), offset + len(docs) < total)
