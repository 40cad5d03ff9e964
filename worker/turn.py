"""The turn pipeline: lock → mailbox head → history window → model → fenced commit → release.

This is the one orchestrator of a turn and knows nothing of Celery. ``drain_session``
runs every pending turn of one session, in sequence order, while holding its lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from redis.exceptions import RedisError

from shared.errors import CommitRejected, LockLost, ModelGaveUp, ModelUnavailable, SessionBusy
from shared.quotas import CHARS_PER_TOKEN, Quotas, estimate_tokens
from shared.settings import Settings
from shared.store import DeltaBatcher, Head, Heartbeat, Lease, Outcome, SessionStore, Turn
from shared.store import history as docs
from shared.store.outbox import EventName, Outbox
from worker.model import ModelSource, call_model

log = logging.getLogger(__name__)


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the pipeline needs, built once per worker process and injected.

    ``webhooks_due``: called when a commit wrote an outbox message (wakes the sender)."""

    settings: Settings
    store: SessionStore
    heartbeat: Heartbeat
    deltas: DeltaBatcher
    models: ModelSource
    outbox: Outbox
    quotas: Quotas
    webhooks_due: Callable[[], None] = _nothing


@dataclass(frozen=True, slots=True)
class DrainReport:
    committed: int = 0
    busy: bool = False
    lost_lock: bool = False


async def drain_session(rt: Runtime, tenant: str, session: str) -> DrainReport:
    """Run the session's pending turns until its mailbox is empty or the lock is lost.

    Returns at once when another worker holds the lock (that worker drains). Exactly
    one commit per turn can succeed; any other outcome writes nothing.
    """
    store = rt.store
    keys = store.keys(tenant, session)
    lease = Lease(store, keys)
    try:
        head = await store.begin(keys, lease.token)
    except SessionBusy:
        return DrainReport(busy=True)
    committed = 0
    refused: str | None = None
    async with rt.heartbeat.keep(lease):
        try:
            while head is not None:
                outcome = await run_turn(rt, lease, head)
                webhook = await webhook_event(rt, keys.tenant, head.turn, outcome)
                try:
                    released = await store.commit(
                        keys, lease.token, head.turn, outcome, webhook=webhook
                    )
                except CommitRejected as rejected:
                    log.warning("commit of %s refused: %s", head.turn.id, rejected.reason)
                    if rejected.reason == "NOT_OWNER" or refused == head.turn.id:
                        # Lost the lock, or the same head refused twice: leave the session
                        # to the sweeper and a fresh worker rather than spin on it.
                        await lease.release(force=True)
                        return DrainReport(committed, lost_lock=rejected.reason == "NOT_OWNER")
                    refused, released = head.turn.id, False  # read the head again
                else:
                    committed += 1
                    await settle_tokens(rt, keys.tenant, head, outcome)
                    if webhook:
                        await rt.outbox.note(keys)
                        rt.webhooks_due()
                if released:
                    break
                head = await store.begin(keys, lease.token)
                lease.renewed()
        except (LockLost, SessionBusy):
            return DrainReport(committed, lost_lock=True)
        except BaseException:
            # Let another worker (or the sweeper) take over at once, not after the lease.
            with suppress(Exception):
                await asyncio.shield(lease.release(force=True))
            raise
    return DrainReport(committed)


async def run_turn(rt: Runtime, lease: Lease, head: Head) -> Outcome:
    """The outcome of one turn. Every failure of the model (or of building it) becomes a
    ``failed`` outcome with a reason; only a lost lock (``LockLost``) and Redis errors
    propagate, and then nothing is committed."""
    turn = head.turn
    if turn.kind == "clear":
        return Outcome(status="completed")
    settings = rt.settings
    if turn.attempt > settings.max_turn_attempts:
        # Earlier attempts died with their worker (crash, OOM, kill): do not try forever.
        message = f"the turn was started {turn.attempt - 1} times without finishing"
        return _failed("attempts_exhausted", message)
    content = (turn.input or {}).get("content", "")
    writer = rt.deltas.writer(lease, turn.id, turn.attempt)
    deadline = asyncio.get_running_loop().time() + settings.turn_deadline_s
    try:
        model = rt.models.get()
        prompt = build_prompt(settings, head.history, content, turn.id)
        with lease.guard():
            reply = await call_model(
                model,
                prompt,
                settings=settings,
                deadline=deadline,
                on_delta=writer.write,
                on_retry=writer.retry,
            )
    except (LockLost, RedisError):
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
            docs.user_doc(content, turn_id=turn.id),
            docs.assistant_doc(reply, turn_id=turn.id),
        ),
        tail=tail,
        tail_try=writer.try_number,
    )


async def webhook_event(
    rt: Runtime, tenant: str, turn: Turn, outcome: Outcome
) -> EventName | Literal[""]:
    """The webhook event a turn's commit announces (``""``: nobody listens)."""
    if turn.kind != "message":
        return ""
    event: EventName = "turn.completed" if outcome.status == "completed" else "turn.failed"
    if turn.webhook or await rt.outbox.subscribed(tenant, event):
        return event
    return ""


async def settle_tokens(rt: Runtime, tenant: str, head: Head, outcome: Outcome) -> None:
    """Correct the tenant's token budget by what the committed turn cost, once per turn.

    The reservation made at accept is re-derived from the message; the cost is estimated
    from the characters the model read (history and message) and wrote."""
    turn = head.turn
    if turn.kind != "message":
        return
    content = (turn.input or {}).get("content", "")
    reply = (outcome.output or {}).get("content", "")
    read = sum(len(str(m.get("data", {}).get("content", ""))) for m in head.history)
    actual = (
        estimate_tokens(rt.settings.system_prompt)
        + estimate_tokens(content)
        + (estimate_tokens(reply) + read // CHARS_PER_TOKEN if outcome.status == "completed" else 0)
    )
    try:
        await rt.quotas.settle_tokens(tenant, rt.quotas.turn_estimate(content), actual)
    except RedisError:
        log.warning("token budget of %s not settled for %s", tenant, turn.id, exc_info=True)


def _failed(code: str, message: str) -> Outcome:
    return Outcome(status="failed", error={"code": code, "message": message})


def build_prompt(
    settings: Settings, window: list[dict[str, Any]], content: str, turn_id: str
) -> list[BaseMessage]:
    """System prompt, then the session's history window (never starting mid-exchange),
    then this turn's user message."""
    messages: list[BaseMessage] = []
    if settings.system_prompt:
        messages.append(SystemMessage(content=settings.system_prompt))
    messages.extend(docs.to_messages(docs.trim_to_pairs(window)))
    messages.append(HumanMessage(content=content, id=f"{turn_id}:user"))
    return messages
