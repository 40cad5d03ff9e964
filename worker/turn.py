"""The turn pipeline: lock → mailbox head → history window → model → fenced commit → release.

This is the one orchestrator of a turn and knows nothing of Celery. ``drain_session``
runs every pending turn of one session, in sequence order, while holding its lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from shared import history, lock, mailbox
from shared.errors import CommitRejected, LockLost, ModelGaveUp, SessionBusy
from shared.events import DeltaWriter
from shared.keys import SessionKeys
from shared.mailbox import Head, Outcome
from shared.settings import Settings
from worker.model import call_model

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnDeps:
    """What the pipeline needs, built once per worker process and injected."""

    settings: Settings
    client: Any
    scripts: Any
    model: BaseChatModel
    leases: lock.LeaseKeeper


@dataclass(frozen=True, slots=True)
class DrainReport:
    committed: int = 0
    busy: bool = False
    lost_lock: bool = False


def drain_session(deps: TurnDeps, tenant: str, session: str) -> DrainReport:
    """Run the session's pending turns until its mailbox is empty or the lock is lost.

    Returns at once when another worker holds the lock (that worker drains). Exactly
    one commit per turn can succeed; any other outcome writes nothing.
    """
    settings = deps.settings
    keys = SessionKeys(settings.key_prefix, tenant, session)
    token = lock.new_token()
    try:
        head = mailbox.begin(deps.scripts, keys, token, settings)
    except SessionBusy:
        return DrainReport(busy=True)
    if head is None:
        return DrainReport()

    lease = deps.leases.hold(keys, token)
    committed = 0
    refused: str | None = None
    try:
        while head is not None:
            outcome = run_turn(deps, keys, token, head, lease.lost)
            try:
                released = mailbox.commit(deps.scripts, keys, token, head, outcome, settings)
            except CommitRejected as rejected:
                log.warning("commit of %s refused: %s", head.turn_id, rejected.reason)
                if rejected.reason == "NOT_OWNER" or refused == head.turn_id:
                    # Lost the lock, or the same head refused twice: leave the session to
                    # the sweeper and a fresh worker rather than spin on it.
                    lock.release(deps.scripts, keys, token, force=True)
                    return DrainReport(committed, lost_lock=rejected.reason == "NOT_OWNER")
                refused, released = head.turn_id, False  # re-read the head
            else:
                committed += 1
            if released:
                return DrainReport(committed)
            head = mailbox.begin(deps.scripts, keys, token, settings)
            lease.lost.clear()  # begin just (re)took the lock with this token
        return DrainReport(committed)
    except (LockLost, SessionBusy):
        return DrainReport(committed, lost_lock=True)
    except BaseException:
        # Let another worker (or the sweeper) take over at once rather than after the lease.
        lock.release(deps.scripts, keys, token, force=True)
        raise
    finally:
        deps.leases.drop(lease)


def run_turn(deps: TurnDeps, keys: SessionKeys, token: str, head: Head, lost: Any) -> Outcome:
    """Produce the outcome of one turn; never raises for model failures (they become
    ``failed`` outcomes). Raises ``LockLost`` if the lock goes while the model runs."""
    if head.kind == "clear":
        return Outcome(status="completed", output={"content": ""})
    settings = deps.settings
    if head.attempt > settings.max_turn_attempts:
        # Earlier attempts died with their worker (crash, OOM, kill): do not try forever.
        message = f"the turn was started {head.attempt - 1} times without finishing"
        return Outcome(status="failed", error={"code": "attempts_exhausted", "message": message})
    content = (head.input or {}).get("content", "")
    prompt = build_prompt(settings, head.history, content, head.turn_id)
    writer = DeltaWriter(
        deps.scripts, keys, token, head.turn_id, head.attempt, settings.stream_flush_s
    )
    deadline = time.monotonic() + settings.turn_deadline_s
    try:
        reply = call_model(
            deps.model,
            prompt,
            settings=settings,
            deadline=deadline,
            lost=lost,
            on_delta=writer.write,
            on_attempt=writer.retry,
        )
    except ModelGaveUp as gave_up:
        writer.take_tail()
        return Outcome(status="failed", error={"code": gave_up.code, "message": str(gave_up)})
    return Outcome(
        status="completed",
        output={"content": reply},
        messages=(
            history.user_doc(content, turn_id=head.turn_id),
            history.assistant_doc(reply, turn_id=head.turn_id),
        ),
        tail_delta=writer.take_tail(),
        tail_try=writer.try_number,
    )


def build_prompt(
    settings: Settings, window: list[dict[str, Any]], content: str, turn_id: str
) -> list[BaseMessage]:
    """System prompt, then the session's history window, then this turn's user message."""
    messages: list[BaseMessage] = []
    if settings.system_prompt:
        messages.append(SystemMessage(content=settings.system_prompt))
    messages.extend(history.to_messages(history.trim_to_pairs(window)))
    messages.append(HumanMessage(content=content, id=f"{turn_id}:user"))
    return messages
