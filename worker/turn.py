"""The turn pipeline: lock → mailbox head → history window → model → fenced commit → release.

This is the one orchestrator of a turn and knows nothing of Celery. ``drain_session``
runs every pending turn of one session, in sequence order, while holding its lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from redis.exceptions import RedisError

from shared.aio import event_set_within
from shared.errors import (
    CommitRejected,
    LockLost,
    ModelGaveUp,
    ModelUnavailable,
    SessionBusy,
    TurnStopped,
)
from shared.keys import SessionKeys
from shared.quotas import CHARS_PER_TOKEN, Quotas, estimate_tokens
from shared.settings import Settings
from shared.store import (
    Debounce,
    DeltaBatcher,
    Head,
    Heartbeat,
    Lease,
    Outcome,
    SessionStore,
    Turn,
)
from shared.store import history as docs
from shared.store.dead_turns import DeadTurns
from shared.store.outbox import EventName, Outbox
from worker.metrics import WorkerMetrics
from worker.model import ModelSource, call_model

log = logging.getLogger(__name__)

ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # a poison turn: its workers died on it every time


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the pipeline needs, built once per worker process and injected.

    ``webhooks_due``: called when a commit wrote an outbox message (wakes the sender).
    ``stopping``: set when the process stops: a drain starts no further turn, and a
    group waiting out its debounce is left at once; the lock is released for a worker
    that stays (the sweeper wakes one)."""

    settings: Settings
    store: SessionStore
    heartbeat: Heartbeat
    deltas: DeltaBatcher
    models: ModelSource
    outbox: Outbox
    quotas: Quotas
    webhooks_due: Callable[[], None] = _nothing
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)


@dataclass(frozen=True, slots=True)
class DrainReport:
    committed: int = 0
    busy: bool = False
    lost_lock: bool = False
    stopped: int = 0
    """Attempts made void while they ran (a cancel, a double text): their model calls
    were aborted and nothing of them was written."""


async def drain_session(rt: Runtime, tenant: str, session: str) -> DrainReport:
    """Run the session's pending turns until its mailbox is empty or the lock is lost.

    Returns at once when another worker holds the lock (that worker drains). Exactly
    one commit per turn can succeed; any other outcome writes nothing. A coalesced group
    still inside its debounce window is waited for here, holding the lock (so messages
    that arrive meanwhile need no wake-up); an attempt that is stopped (its turn was
    cancelled, or a message joined its group) is abandoned and the mailbox read again.
    """
    store = rt.store
    keys = store.keys(tenant, session)
    lease = Lease(store, keys)
    try:
        head = await store.begin(keys, lease.token)
    except SessionBusy:
        rt.metrics.drains.labels("busy").inc()
        return DrainReport(busy=True)
    report = await _drain(rt, keys, lease, head)
    found = "lost_lock" if report.lost_lock else "drained" if head is not None else "empty"
    rt.metrics.drains.labels(found).inc()
    return report


async def _drain(
    rt: Runtime, keys: SessionKeys, lease: Lease, head: Head | Debounce | None
) -> DrainReport:
    store = rt.store
    committed = stopped = 0
    refused: str | None = None
    async with rt.heartbeat.keep(lease):
        try:
            while head is not None:
                if isinstance(head, Debounce):
                    lease.renewed(head.generation)  # nothing of this worker's is void now
                    if await event_set_within(rt.stopping, head.wait_s):
                        await lease.release(force=True)  # the sweeper wakes another worker
                        return DrainReport(committed, stopped=stopped)
                    if lease.lost.is_set():
                        raise LockLost("session lock lost while waiting")
                    head = await store.begin(keys, lease.token)
                    continue
                lease.renewed(head.generation)
                try:
                    outcome = await run_turn(rt, lease, head)
                except TurnStopped:
                    stopped += 1
                    head = await store.begin(keys, lease.token)
                    continue
                webhook = await webhook_event(rt, keys.tenant, head.group, outcome)
                try:
                    released = await store.commit(keys, lease.token, head, outcome, webhook=webhook)
                except CommitRejected as rejected:
                    log.warning("commit of %s refused: %s", head.turn.id, rejected.reason)
                    rt.metrics.commits.labels(rejected.reason.lower()).inc()
                    if rejected.reason == "STOPPED":
                        stopped += 1
                        released = False
                    elif rejected.reason == "NOT_OWNER" or refused == head.turn.id:
                        # Lost the lock, or the same head refused twice: leave the session
                        # to the sweeper and a fresh worker rather than spin on it.
                        await lease.release(force=True)
                        return DrainReport(
                            committed, lost_lock=rejected.reason == "NOT_OWNER", stopped=stopped
                        )
                    else:
                        refused, released = head.turn.id, False  # read the head again
                else:
                    committed += len(head.group)
                    await _committed(rt, keys.tenant, head, outcome)
                    await settle_tokens(rt, keys.tenant, head, outcome)
                    if webhook:
                        await rt.outbox.note(keys)
                        rt.webhooks_due()
                if released:
                    break
                if rt.stopping.is_set():  # between turns: leave the rest to another worker
                    await lease.release(force=True)
                    return DrainReport(committed, stopped=stopped)
                head = await store.begin(keys, lease.token)
        except (LockLost, SessionBusy):  # another worker holds the session now
            return DrainReport(committed, lost_lock=True, stopped=stopped)
        except BaseException:
            # Let another worker (or the sweeper) take over at once, not after the lease.
            with suppress(Exception):
                await asyncio.shield(lease.release(force=True))
            raise
    return DrainReport(committed, stopped=stopped)


async def run_turn(rt: Runtime, lease: Lease, head: Head) -> Outcome:
    """The outcome of one turn (and the coalesced turns its model call also answers).
    Every failure of the model (or of building it) becomes a ``failed`` outcome with a
    reason; only a lost lock (``LockLost``), a stopped attempt (``TurnStopped``) and Redis
    errors propagate, and then nothing is committed."""
    turn = head.turn
    if turn.kind == "clear":
        return Outcome(status="completed")
    settings = rt.settings
    if turn.crashes >= settings.max_turn_attempts:
        # Earlier attempts died with their worker (crash, OOM, kill): do not try forever.
        message = f"the turn was started {turn.crashes} times without finishing"
        return _failed(ATTEMPTS_EXHAUSTED, message)
    said = [((t.input or {}).get("content", ""), t.id) for t in head.group]
    writer = rt.deltas.writer(lease, turn.id, turn.attempt)

    def retried() -> None:
        rt.metrics.model_retries.inc()
        writer.retry()

    deadline = asyncio.get_running_loop().time() + settings.turn_deadline_s
    try:
        model = rt.models.get()
        prompt = build_prompt(settings, head.history, said)
        with lease.guard():
            reply = await call_model(
                model,
                prompt,
                settings=settings,
                deadline=deadline,
                on_delta=writer.write,
                on_retry=retried,
            )
    except (LockLost, TurnStopped, RedisError):
        raise
    except ModelGaveUp as gave_up:
        return _failed(gave_up.code, str(gave_up))
    except ModelUnavailable as unavailable:
        return _failed("model_unavailable", str(unavailable))
    except Exception as exc:
        log.exception("turn %s failed unexpectedly", turn.id)
        return _failed("internal_error", f"{type(exc).__name__}: {exc}")
    finally:
        tail = await writer.close()
    return Outcome(
        status="completed",
        output={"content": reply},
        messages=(
            *(docs.user_doc(content, turn_id=turn_id) for content, turn_id in said),
            docs.assistant_doc(reply, turn_id=turn.id),
        ),
        tail=tail,
        tail_try=writer.try_number,
    )


async def webhook_event(
    rt: Runtime, tenant: str, group: tuple[Turn, ...], outcome: Outcome
) -> EventName | Literal[""]:
    """The webhook event the commit of a turn (with its coalesced group) announces
    (``""``: nobody listens). A turn from a messaging channel always announces it: its
    outbox message is what queues the reply to its chat."""
    turn = group[0]
    if turn.kind != "message":
        return ""
    event: EventName = "turn.completed" if outcome.status == "completed" else "turn.failed"
    if any(t.webhook or t.channel for t in group) or await rt.outbox.subscribed(tenant, event):
        return event
    return ""


async def settle_tokens(rt: Runtime, tenant: str, head: Head, outcome: Outcome) -> None:
    """Correct the tenant's token budget by what the committed turn (with its coalesced
    group) cost, once per model call.

    The reservations made at accept are re-derived from the messages; the cost is
    estimated from the characters the model read (history and messages) and wrote."""
    if head.turn.kind != "message":
        return
    contents = [(t.input or {}).get("content", "") for t in head.group]
    reply = (outcome.output or {}).get("content", "")
    read = sum(len(str(m.get("data", {}).get("content", ""))) for m in head.history)
    actual = (
        estimate_tokens(rt.settings.system_prompt)
        + sum(estimate_tokens(c) for c in contents)
        + (estimate_tokens(reply) + read // CHARS_PER_TOKEN if outcome.status == "completed" else 0)
    )
    reserved = sum(rt.quotas.turn_estimate(c) for c in contents)
    try:
        await rt.quotas.settle_tokens(tenant, reserved, actual)
    except RedisError:
        log.warning("token budget of %s not settled for %s", tenant, head.turn.id, exc_info=True)


async def _committed(rt: Runtime, tenant: str, head: Head, outcome: Outcome) -> None:
    """Count a commit; list a poison turn among its tenant's dead letters."""
    metrics = rt.metrics
    metrics.commits.labels("ok").inc()
    reason = (outcome.error or {}).get("code", "") if outcome.status == "failed" else ""
    metrics.turns.labels(outcome.status, reason).inc()
    if reason == ATTEMPTS_EXHAUSTED:
        metrics.dead_turns.inc()
        dead = DeadTurns(rt.store.client, rt.settings.key_prefix)
        try:
            await dead.bury(tenant, head.turn, outcome.error)
        except RedisError:
            log.warning("poison turn %s failed but not listed", head.turn.id, exc_info=True)


def _failed(code: str, message: str) -> Outcome:
    return Outcome(status="failed", error={"code": code, "message": message})


def build_prompt(
    settings: Settings, window: list[dict[str, Any]], said: list[tuple[str, str]]
) -> list[BaseMessage]:
    """System prompt, then the session's history window (never starting mid-exchange),
    then this turn's user messages (``(content, turn id)``, more than one when
    coalesced), in order."""
    messages: list[BaseMessage] = []
    if settings.system_prompt:
        messages.append(SystemMessage(content=settings.system_prompt))
    messages.extend(docs.to_messages(docs.trim_to_pairs(window)))
    messages.extend(HumanMessage(content=c, id=f"{turn_id}:user") for c, turn_id in said)
    return messages
