"""The ledger check: ``check`` holds a ``Ledger`` of what clients were told against the
``End`` of the run (``tests.support.ledger``) and reports each violation with its ``Kind``:

- ``lost``: an accepted turn without a record; a message or reply the system keeps
  (a completed turn's message, an interrupted one's, a group leader's reply) missing
  from history; a turn cancelled at a client's request that no client made.
- ``duplicated``: a history document id twice; a message in history (under distinct
  ids) more often than it was sent; a second record for a message sent once.
- ``reordered``: user messages in history out of sequence order; turns the ledger
  recorded without a seq (channel messages, sent one after another) stored out of
  the order they were sent.
- ``foreign``: history, a prompt or a reply carrying another session's canary
  (``tests.support.checker.message_for``); a history document of no turn of its
  session; a record the ledger never accepted; a delivery naming another session.
- ``stuck``: a record not terminal (``completed``, ``failed``, ``cancelled``).
- ``seq_mismatch``: the seq a client was told is not the stored one.
- ``cancel_ignored``: a cancel answered ``cancelled``, yet the turn ended otherwise.
- ``webhook_missing`` / ``webhook_duplicated`` / ``webhook_uncommitted``: a terminal
  turn owed an event (its own ``webhook`` URL, or its tenant subscribed to the event)
  that no delivery brought; one turn's event under two ``webhook-id`` values (the same
  id repeated is at-least-once, fine); a delivery for a turn that is not terminal, is
  unknown to the ledger, or whose event, status or output disagree with the record.
- ``reply_missing`` / ``reply_duplicated`` / ``reply_uncommitted``: the same for replies
  to messaging chats. A channel group leader owes its chat its output once (or, failed,
  its endpoint's ``failure_reply``), split as ``shared.channels.split`` splits it when the
  ledger knows the bot's platform, else as one exact (stripped) text. Replies are counted
  per chat and text, so identical texts (failure replies) are judged by their number.
- ``strategy``: what ``tests.support.turn_checker.check_turns`` finds beyond the kinds
  above (double texting, groups, final events), and a stored strategy that is not the one
  a client asked for.

Which session a message belongs to is judged by its canary, never by clocks; which order
turns took is judged by their stored seq.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from shared.store.records import TERMINAL_STATUSES
from tests.support.ledger import (
    CANARY,
    End,
    Entry,
    Kind,
    Ledger,
    Prompt,
    SessionKey,
    Violation,
    canary_owners,
    session_name,
    strangers_in,
)
from tests.support.ledger_outbox import check_hooks, check_replies
from tests.support.turn_checker import SessionRun, TurnView, check_turns

# check_turns findings this module reports under a kind of its own.
_COVERED = re.compile(
    r"is stuck|history holds \S+ \d+ times|history holds a foreign|missing from history"
    r"|not in acceptance order"
)


def check(ledger: Ledger, end: End) -> list[Violation]:
    """Every violation found; empty when clean."""
    owners = canary_owners(ledger)
    found: list[Violation] = []
    matched: dict[str, tuple[Entry, TurnView]] = {}
    sessions = ledger.by_session()
    for key in dict.fromkeys([*sessions, *end.runs]):
        run = end.runs.get(key) or SessionRun([], [])
        entries = sessions.get(key, [])
        pairs, strays = _match(entries, run.turns)
        found += _check_records(ledger, key, pairs, strays, run.turns)
        found += _check_history(key, entries, run, owners)
        matched.update({view.id: (entry, view) for entry, view in pairs if view is not None})
    found += _check_prompts(end.prompts or [], owners)
    found += check_hooks(ledger, end.hooks, matched)
    found += check_replies(ledger, end.sends, matched, owners)
    found += _check_strategy(end)
    return found


def counts(violations: Iterable[Violation]) -> dict[Kind, int]:
    """How many violations of each kind (kinds not found are absent)."""
    return dict(Counter(v.kind for v in violations))


def report(violations: Sequence[Violation], limit: int = 40) -> str:
    """An assertion message: the counts, then the first ``limit`` violations."""
    if not violations:
        return "no violations"
    lines = [f"{len(violations)} violations: {counts(violations)}"]
    lines += [f"  {v}" for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"  ... and {len(violations) - limit} more")
    return "\n".join(lines)


def _match(
    entries: list[Entry], turns: list[TurnView]
) -> tuple[list[tuple[Entry, TurnView | None]], list[TurnView]]:
    """Each entry with its record (by turn id, else the first unclaimed record of the
    same message), in ledger order; and the records no entry claimed."""
    by_id = {t.id: t for t in turns}
    claimed = {e.turn_id for e in entries if e.turn_id in by_id}
    found: dict[int, TurnView | None] = {}
    for i, e in enumerate(entries):
        if e.turn_id is not None:
            found[i] = by_id.get(e.turn_id)
            continue
        view = next(
            (
                t
                for t in turns
                if t.id not in claimed and t.kind == e.kind and t.content == e.content
            ),
            None,
        )
        if view is not None:
            claimed.add(view.id)
        found[i] = view
    pairs = [(e, found[i]) for i, e in enumerate(entries)]
    return pairs, [t for t in turns if t.id not in claimed]


def _check_records(
    ledger: Ledger,
    key: SessionKey,
    pairs: list[tuple[Entry, TurnView | None]],
    strays: list[TurnView],
    turns: list[TurnView],
) -> list[Violation]:
    name = session_name(key)
    found: list[Violation] = []
    for e, view in pairs:
        if view is None:
            if e.certain:
                what = e.turn_id or f"the turn of {e.content!r}"
                found.append(Violation("lost", f"{name}: {what} was accepted, has no record"))
            continue
        if e.seq is not None and view.seq != e.seq:
            detail = f"{name}: {view.id} was told seq {e.seq}, stored {view.seq}"
            found.append(Violation("seq_mismatch", detail))
        if e.kind == "message" and view.content != e.content:
            detail = f"{name}: {view.id} holds {view.content!r}, sent {e.content!r}"
            found.append(Violation("foreign", detail))
        if e.strategy is not None and view.strategy != e.strategy:
            detail = f"{name}: {view.id} asked {e.strategy}, stored {view.strategy}"
            found.append(Violation("strategy", detail))
    sent = {e.content for e, _ in pairs if e.kind == "message"}
    for t in strays:
        if t.kind == "message" and t.content in sent:
            detail = f"{name}: {t.id} (seq {t.seq}) is a second turn of a message sent once"
            found.append(Violation("duplicated", detail))
        else:
            detail = f"{name}: {t.id} (seq {t.seq}) was never accepted"
            found.append(Violation("foreign", detail))
    unsent = [view.seq for e, view in pairs if view is not None and e.certain and e.seq is None]
    if unsent != sorted(unsent):
        found.append(Violation("reordered", f"{name}: seqs {unsent} not in the order sent"))
    found += [
        Violation("stuck", f"{name}: {t.id} (seq {t.seq}) is stuck {t.status}")
        for t in turns
        if t.status not in TERMINAL_STATUSES
    ]
    return found + _check_cancels(ledger, key, turns)


def _check_cancels(ledger: Ledger, key: SessionKey, turns: list[TurnView]) -> list[Violation]:
    name = session_name(key)
    cancels = [c for c in ledger.cancels if (c.tenant, c.session) == key]
    by_id = {t.id: t for t in turns}
    found = [
        Violation("cancel_ignored", f"{name}: {c.turn_id} was cancelled, ended {view.status}")
        for c in cancels
        if c.status == "cancelled"
        and (view := by_id.get(c.turn_id)) is not None
        and view.status != "cancelled"
    ]
    asked = {c.turn_id for c in cancels}
    found += [
        Violation("lost", f"{name}: {t.id} (seq {t.seq}) cancelled though no client asked")
        for t in turns
        if t.status == "cancelled" and t.reason == "requested" and t.id not in asked
    ]
    return found


def _check_history(
    key: SessionKey, entries: list[Entry], run: SessionRun, owners: Mapping[str, SessionKey]
) -> list[Violation]:
    name = session_name(key)
    found: list[Violation] = []
    ids = [doc_id for _, _, doc_id in run.history]
    for doc_id, n in Counter(ids).items():
        if n > 1:
            found.append(Violation("duplicated", f"{name}: history holds {doc_id} {n} times"))
    sent = Counter(e.content for e in entries if e.kind == "message")
    first: dict[str, tuple[str, str]] = {}
    for role, content, doc_id in run.history:
        first.setdefault(doc_id, (role, content))
    said = Counter(content for role, content in first.values() if role == "human")
    for content, n in said.items():
        if n > sent[content] > 0:
            detail = f"{name}: history holds {content!r} {n} times, sent {sent[content]}"
            found.append(Violation("duplicated", detail))
    records = {t.id for t in run.turns}
    for role, content, doc_id in run.history:
        strangers = strangers_in(content, key, owners)
        if strangers:
            detail = f"{name}: history {doc_id} holds messages of {sorted(strangers)}"
        elif doc_id.rsplit(":", 1)[0] not in records:
            detail = f"{name}: history holds {doc_id}, of no turn of this session"
        elif role == "human" and not sent[content]:
            detail = f"{name}: history {doc_id} holds {content!r}, never sent here"
        else:
            continue
        found.append(Violation("foreign", detail))
    return found + _check_kept(name, run, ids)


def _check_kept(name: str, run: SessionRun, ids: list[str]) -> list[Violation]:
    """What history must keep (since the last completed clear), in sequence order."""
    found: list[Violation] = []
    place: dict[str, int] = {}
    for i, doc_id in enumerate(ids):
        place.setdefault(doc_id, i)
    cleared = max(
        (t.seq for t in run.turns if t.kind == "clear" and t.status == "completed"), default=0
    )
    for t in run.turns:
        if t.kind != "message" or t.seq < cleared:
            continue
        keeps = t.status == "completed" or (t.status == "cancelled" and t.reason == "interrupted")
        if keeps and f"{t.id}:user" not in place:
            detail = f"{name}: {t.id} (seq {t.seq}, {t.status}) message missing from history"
            found.append(Violation("lost", detail))
        if t.status == "completed" and t.answered_by is None and f"{t.id}:assistant" not in place:
            detail = f"{name}: {t.id} (seq {t.seq}) reply missing from history"
            found.append(Violation("lost", detail))
    kept = [place[f"{t.id}:user"] for t in run.turns if f"{t.id}:user" in place]
    if kept != sorted(kept):
        found.append(Violation("reordered", f"{name}: history messages not in seq order"))
    return found


def _check_prompts(prompts: list[Prompt], owners: Mapping[str, SessionKey]) -> list[Violation]:
    found: list[Violation] = []
    for i, prompt in enumerate(prompts):
        text = " ".join(str(m.get("content", "")) for m in prompt)
        sessions = {session_name(owners[c]) if c in owners else "?" for c in CANARY.findall(text)}
        if len(sessions) > 1 or "?" in sessions:
            detail = f"prompt {i} holds messages of {sorted(sessions)} ('?': never sent)"
            found.append(Violation("foreign", detail))
    return found


def _check_strategy(end: End) -> list[Violation]:
    """``check_turns`` over every session, less what the kinds above report (a group
    missing a message or its reply is ``lost``, not also "not together")."""
    runs = {session_name(key): run for key, run in end.runs.items()}
    incomplete = {
        f"{name}: group of turn {seq}:" for name, run in runs.items() for seq in _gapped(run)
    }
    return [
        Violation("strategy", problem)
        for problem in check_turns(runs, prompts=end.prompts)
        if not _COVERED.search(problem) and not any(problem.startswith(g) for g in incomplete)
    ]


def _gapped(run: SessionRun) -> set[int]:
    """The seqs of group leaders some of whose history documents are missing."""
    docs = {doc_id for _, _, doc_id in run.history}
    by_id = {t.id: t for t in run.turns}
    gapped: set[int] = set()
    for t in run.turns:
        leader = by_id.get(t.answered_by or t.id)
        if t.status != "completed" or t.kind != "message" or leader is None:
            continue
        needs = [f"{t.id}:user"] + ([f"{t.id}:assistant"] if t.answered_by is None else [])
        if not docs.issuperset(needs):
            gapped.add(leader.seq)
    return gapped
