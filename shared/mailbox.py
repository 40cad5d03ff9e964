"""The session mailbox: accepting turns, taking the head, committing it.

The mailbox is a Redis list of turn ids in sequence order. Each operation is one
Lua script, so a session's queue, history and lock only ever change together.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from shared.errors import CommitRejected, IdempotencyConflict, MailboxFull, SessionBusy
from shared.keys import GlobalKeys, SessionKeys
from shared.schemas import now_ms
from shared.settings import Settings


def new_turn_id() -> str:
    return f"turn_{secrets.token_hex(12)}"


def fingerprint(kind: str, input_json: str) -> str:
    """What an ``Idempotency-Key`` is bound to: the operation and its exact input."""
    return hashlib.sha256(f"{kind}\n{input_json}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Accepted:
    turn_id: str
    seq: int | None
    replayed: bool
    needs_nudge: bool
    created_ms: int = 0


@dataclass(frozen=True, slots=True)
class AcceptCall:
    """The arguments of one ``accept.lua`` call, built without I/O."""

    keys: list[str]
    args: list[str | int]

    @classmethod
    def build(
        cls,
        settings: Settings,
        keys: SessionKeys,
        *,
        kind: str,
        input_doc: dict[str, Any] | None,
        idempotency_key: str | None,
    ) -> AcceptCall:
        turn_id = new_turn_id()
        input_json = json.dumps(input_doc, separators=(",", ":")) if input_doc is not None else ""
        return cls(
            keys=[
                keys.meta,
                keys.mailbox,
                keys.turn(turn_id),
                keys.events(turn_id),
                keys.idempotency(idempotency_key or ""),
                keys.lock,
                keys.history,
            ],
            args=[
                turn_id,
                kind,
                input_json,
                now_ms(),
                settings.session_ttl_ms,
                "1" if idempotency_key else "0",
                fingerprint(kind, input_json),
                # Never remember a key longer than the turn it points to can live.
                min(settings.idempotency_ttl_s * 1000, settings.session_ttl_ms),
                settings.max_pending_turns,
                keys.session,
            ],
        )

    def queue_on(self, pipe: Any, script: Any, index: str, member: str) -> None:
        """Add this accept to ``pipe`` (sync or asyncio): mark the session active for the
        sweeper *before* the script runs, then EVALSHA ``accept.lua`` (a pipeline holding
        Script objects would re-check SCRIPT EXISTS on every execute). The script's reply
        is the pipeline's last result; on ``NoScriptError`` (a restarted server) call
        ``script`` directly, which loads it."""
        pipe.zadd(index, {member: now_ms()})
        pipe.evalsha(script.sha, len(self.keys), *self.keys, *self.args)

    def parse(self, reply: Sequence[Any]) -> Accepted:
        """Turn the script's answer into ``Accepted`` or the matching ``AcceptRejected``."""
        verdict = reply[0]
        if verdict == "OK":
            return Accepted(
                str(reply[1]),
                int(reply[2]),
                replayed=False,
                needs_nudge=not reply[3],
                created_ms=int(self.args[3]),
            )
        if verdict == "REPLAY":
            return Accepted(str(reply[1]), None, replayed=True, needs_nudge=False)
        if verdict == "CONFLICT":
            raise IdempotencyConflict(str(reply[1]))
        raise MailboxFull(f"{reply[1]} turns are already pending in this session")


def accept(
    client: Any,
    scripts: Any,
    settings: Settings,
    keys: SessionKeys,
    *,
    kind: str = "message",
    input_doc: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Accepted:
    """Synchronous accept (tools, tests, benchmarks): the same round trip the API makes.

    Marks the session active for the sweeper, then runs ``accept.lua``. The caller
    sends the wake-up when ``needs_nudge`` is set.
    """
    call = AcceptCall.build(
        settings, keys, kind=kind, input_doc=input_doc, idempotency_key=idempotency_key
    )
    pipe = client.pipeline(transaction=False)
    call.queue_on(pipe, scripts.accept, GlobalKeys(settings.key_prefix).active, keys.member)
    try:
        reply = pipe.execute()[-1]
    except NoScriptError:
        reply = scripts.accept(keys=call.keys, args=call.args)
    return call.parse(reply)


@dataclass(frozen=True, slots=True)
class Head:
    """The mailbox head as ``begin.lua`` hands it to the worker that holds the lock."""

    turn_id: str
    kind: str
    seq: int
    input: dict[str, Any] | None
    attempt: int
    started_ms: int
    history: list[dict[str, Any]]


def begin(scripts: Any, keys: SessionKeys, token: str, settings: Settings) -> Head | None:
    """Take (or keep) the lock and the mailbox head; ``None`` when nothing is pending.

    Raises ``SessionBusy`` when another worker holds the lock. One round trip.
    """
    started_ms = now_ms()
    reply = scripts.begin(
        keys=[keys.lock, keys.mailbox, keys.history, keys.meta, keys.nudged],
        args=[
            token,
            settings.lock_ttl_ms,
            settings.history_window,
            started_ms,
            keys.turn_prefix,
            keys.events_prefix,
            settings.session_ttl_ms,
        ],
    )
    verdict = reply[0]
    if verdict == "BUSY":
        raise SessionBusy(keys.member)
    if verdict == "EMPTY":
        return None
    return Head(
        turn_id=reply[1],
        kind=reply[2],
        seq=int(reply[3]),
        input=json.loads(reply[4]) if reply[4] else None,
        attempt=int(reply[5]),
        started_ms=started_ms,
        history=[json.loads(doc) for doc in reply[6:]],
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a turn produced: ``completed`` with messages and output, or ``failed`` with an error."""

    status: str
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    messages: tuple[dict[str, Any], ...] = ()
    tail_delta: str = ""
    tail_try: int = 0


def commit(
    scripts: Any,
    keys: SessionKeys,
    token: str,
    head: Head,
    outcome: Outcome,
    settings: Settings,
) -> bool:
    """Fenced commit of the head; returns True when the lock was released (mailbox empty).

    Raises ``CommitRejected`` with ``NOT_OWNER``, ``DUPLICATE`` or ``OUT_OF_ORDER``; then
    nothing was written. One round trip.
    """
    dumps = json.dumps
    finished_ms = now_ms()
    output = dumps(outcome.output) if outcome.output is not None else ""
    error = dumps(outcome.error) if outcome.error is not None else ""
    final: dict[str, Any] = {
        "status": outcome.status,
        "seq": head.seq,
        "attempt": head.attempt,
        "started_at": head.started_ms,
        "finished_at": finished_ms,
    }
    if outcome.output is not None:
        final["output"] = outcome.output
    if outcome.error is not None:
        final["error"] = outcome.error
    tail = ""
    if outcome.tail_delta:
        tail = dumps({"attempt": head.attempt, "try": outcome.tail_try, "text": outcome.tail_delta})
    reply = scripts.commit(
        keys=[
            keys.lock,
            keys.mailbox,
            keys.history,
            keys.meta,
            keys.turn(head.turn_id),
            keys.events(head.turn_id),
        ],
        args=[
            token,
            head.turn_id,
            head.seq,
            outcome.status,
            finished_ms,
            settings.session_ttl_ms,
            settings.lock_ttl_ms,
            output,
            error,
            tail,
            dumps(final),
            settings.events_ttl_ms,
            *(dumps(m, separators=(",", ":")) for m in outcome.messages),
        ],
    )
    if reply[0] != "OK":
        raise CommitRejected(reply[0])
    return bool(int(reply[1]))
