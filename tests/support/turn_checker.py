"""The turn checker: what every session's turns, history and events must satisfy under
double texting (enqueue, reject, interrupt, rollback, coalesce) and cancellation.

It reads what the store holds at the end of a run (``observe``) and checks it against
the guarantees of each strategy. Who came first is never judged by clocks: a session's
event stream is one total order, so "was turn P still pending when turn C was accepted"
is "P's final event comes after C's queued event".
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.keys import SessionKeys
from shared.store.records import stream_position

Position = tuple[int, int]
NEVER: Position = (2**63, 0)


@dataclass(frozen=True)
class TurnView:
    """One turn as the checker sees it."""

    id: str
    seq: int
    kind: str
    strategy: str
    status: str
    content: str
    output: str | None = None
    answered_by: str | None = None
    reason: str | None = None  # of a cancellation
    cancelled_by: str | None = None
    queued_at: Position = (0, 0)  # its first event in the session's stream
    final_at: Position = NEVER  # its final event (NEVER: none)
    finals: int = 0  # how many final events it has


@dataclass
class SessionRun:
    """A session at the end of a run: its turns and its history (type, content, doc id)."""

    turns: list[TurnView]
    history: list[tuple[str, str, str]]
    refused: list[str] = field(default_factory=list)  # turn ids named by 409 session-active


def observe(client: Any, keys: SessionKeys) -> SessionRun:
    """Read a session's turns, history and event stream (a sync ``redis.Redis`` that
    decodes responses)."""
    queued: dict[str, Position] = {}
    finals: dict[str, list[Position]] = defaultdict(list)
    for entry_id, fields in client.xrange(keys.events, "-", "+"):
        position = stream_position(entry_id)
        if fields["type"] == "final":
            finals[fields["turn"]].append(position)
        elif fields["type"] == "status" and json.loads(fields["data"])["status"] == "queued":
            queued.setdefault(fields["turn"], position)
    turns = []
    for raw in client.hvals(keys.turns):
        rec = json.loads(raw)
        cancellation = rec.get("cancellation") or {}
        output = rec.get("output") or {}
        turns.append(
            TurnView(
                id=rec["id"],
                seq=rec["seq"],
                kind=rec["kind"],
                strategy=rec.get("strategy") or "enqueue",
                status=rec["status"],
                content=(rec.get("input") or {}).get("content", ""),
                output=output.get("content"),
                answered_by=rec.get("answered_by"),
                reason=cancellation.get("reason"),
                cancelled_by=cancellation.get("by"),
                queued_at=queued.get(rec["id"], (0, 0)),
                final_at=max(finals.get(rec["id"], [NEVER])),
                finals=len(finals.get(rec["id"], [])),
            )
        )
    history = []
    for raw in client.lrange(keys.history, 0, -1):
        doc = json.loads(raw)
        history.append((doc["type"], doc["data"]["content"], doc["data"].get("id") or ""))
    return SessionRun(sorted(turns, key=lambda t: t.seq), history)


def check_turns(
    runs: dict[str, SessionRun],
    *,
    prompts: Iterable[list[dict[str, Any]]] | None = None,
    completed_calls: int | None = None,
    max_group: int = 50,
) -> list[str]:
    """Every violation found; empty when clean.

    ``prompts``: the user messages of every model call made (an OpenAI-style message
    list each), to check that each answered group was answered by a call that saw all of
    its messages in order. ``completed_calls``: model calls that streamed to the end;
    it must equal the groups answered (no message answered twice, none answered
    alone that was merged).
    """
    problems: list[str] = []
    leaders = 0
    endings: list[tuple[str, ...]] = []
    for prompt in prompts or ():
        users = [str(m.get("content", "")) for m in prompt if m.get("role") == "user"]
        endings.extend(tuple(users[-k:]) for k in range(1, len(users) + 1))
    seen_endings = set(endings)
    for session, run in runs.items():
        found, answered = _check_session(session, run, max_group)
        problems.extend(found)
        leaders += len(answered)
        if prompts is not None:
            for group in answered:
                if tuple(group) not in seen_endings:
                    problems.append(
                        f"{session}: no model call saw the group {_short(group)} in order"
                    )
    if completed_calls is not None and completed_calls != leaders:
        problems.append(f"{completed_calls} model calls completed for {leaders} answered groups")
    return problems


def _short(group: list[str]) -> str:
    return "[" + ", ".join(c[:24] for c in group) + "]"


def _check_session(
    session: str, run: SessionRun, max_group: int
) -> tuple[list[str], list[list[str]]]:
    problems: list[str] = []
    turns = run.turns
    by_id = {t.id: t for t in turns}

    def fail(text: str) -> None:
        problems.append(f"{session}: {text}")

    # Every turn ends, once.
    for t in turns:
        if t.status not in ("completed", "failed", "cancelled"):
            fail(f"turn {t.seq} is stuck {t.status}")
        elif t.finals != 1:
            fail(f"turn {t.seq} has {t.finals} final events")

    # History: each document once, none foreign, nothing from a turn that should not be there.
    ids = [doc_id for _, _, doc_id in run.history]
    for doc_id, n in Counter(ids).items():
        if n > 1:
            fail(f"history holds {doc_id} {n} times")
    for kind, _, doc_id in run.history:
        owner = doc_id.rsplit(":", 1)[0]
        if owner not in by_id:
            fail(f"history holds a foreign {kind} message ({doc_id})")
    cleared = max(
        (t.seq for t in turns if t.kind == "clear" and t.status == "completed"), default=0
    )
    place = {doc_id: i for i, doc_id in enumerate(ids)}
    for t in turns:
        if t.kind != "message" or t.seq < cleared:
            continue
        user, reply = f"{t.id}:user", f"{t.id}:assistant"
        leader = t.status == "completed" and t.answered_by is None
        keeps = t.status == "completed" or (t.status == "cancelled" and t.reason == "interrupted")
        if keeps != (user in place):
            where = "missing from" if keeps else "in"
            fail(f"turn {t.seq} ({t.status}, {t.reason}) message {where} history")
        if leader != (reply in place):
            fail(f"turn {t.seq} ({t.status}) reply {'missing from' if leader else 'in'} history")
        if user in place and run.history[place[user]][1] != t.content:
            fail(f"turn {t.seq}: its history message is not what was sent")
    kept = [t for t in turns if f"{t.id}:user" in place]
    if [place[f"{t.id}:user"] for t in kept] != sorted(place[f"{t.id}:user"] for t in kept):
        fail("history messages are not in acceptance order")

    # Groups: a leader, then the turns its call answered, contiguous in history.
    groups: dict[str, list[TurnView]] = {}
    for t in turns:
        if t.status != "completed" or t.kind != "message":
            continue
        if t.answered_by is None:
            groups.setdefault(t.id, []).insert(0, t)
            continue
        leader_turn = by_id.get(t.answered_by)
        if (
            leader_turn is None
            or leader_turn.answered_by is not None
            or leader_turn.status != "completed"
        ):
            fail(f"turn {t.seq} answered by {t.answered_by}, which answered nothing")
            continue
        if leader_turn.seq >= t.seq or t.strategy != "coalesce":
            fail(f"turn {t.seq} ({t.strategy}) merged into turn {leader_turn.seq}")
        if t.output != leader_turn.output:
            fail(f"turn {t.seq}'s output is not its group's reply")
        groups.setdefault(leader_turn.id, []).append(t)
    answered: list[list[str]] = []
    for leader_id, group in groups.items():
        group.sort(key=lambda t: t.seq)
        if group[0].id != leader_id:
            fail(f"group of {leader_id} starts with another turn")
            continue
        if len(group) > max_group:
            fail(f"one call answered {len(group)} turns (at most {max_group})")
        answered.append([t.content for t in group])
        if group[0].seq < cleared:
            continue
        slots = [place.get(f"{t.id}:user", -1) for t in group] + [
            place.get(f"{leader_id}:assistant", -1)
        ]
        if slots != list(range(slots[0], slots[0] + len(slots))):
            fail(
                f"group of turn {group[0].seq}: its messages and reply are not together in history"
            )

    # What each strategy promises about the turns before it.
    messages = [t for t in turns if t.kind == "message"]
    for i, t in enumerate(messages):
        before = [p for p in turns if p.seq < t.seq]
        pending = [p for p in before if p.final_at > t.queued_at]
        if t.strategy == "reject" and pending:
            fail(f"turn {t.seq} (reject) was accepted while turn {pending[0].seq} was pending")
        if t.strategy in ("interrupt", "rollback"):
            reason = "interrupted" if t.strategy == "interrupt" else "rolled_back"
            for p in pending:
                if p.kind == "message" and (p.cancelled_by != t.id or p.reason != reason):
                    fail(f"turn {p.seq} outlived turn {t.seq} ({t.strategy}): {p.status}")
        if t.strategy == "coalesce" and t.status == "completed" and i > 0:
            p = messages[i - 1]
            clear_between = any(c.kind == "clear" and p.seq < c.seq < t.seq for c in turns)
            joined = (t.answered_by or t.id) == (p.answered_by or p.id)
            group_of_p = groups.get(p.answered_by or p.id, [])
            full = len(group_of_p) >= max_group
            if (
                p.status == "completed"
                and p.final_at > t.queued_at
                and not clear_between
                and not joined
                and not full
            ):
                fail(f"turn {t.seq} (coalesce) came while turn {p.seq} was pending, unmerged")
    for t in turns:
        if t.cancelled_by is not None:
            by = by_id.get(t.cancelled_by)
            if by is None or by.seq <= t.seq or by.strategy not in ("interrupt", "rollback"):
                fail(f"turn {t.seq} cancelled by {t.cancelled_by}, which could not cancel it")
        elif t.status == "cancelled" and t.reason not in ("requested", "disconnected"):
            fail(f"turn {t.seq} cancelled ({t.reason}) by no turn")
    for turn_id in run.refused:
        if turn_id not in by_id:
            fail(f"a refusal named {turn_id}, not a turn of this session")
    return problems, answered
