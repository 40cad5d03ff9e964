"""The ledger checker: what clients were told during a fault run, held against what Redis,
the webhook receivers and the messaging platforms hold at its end.

Each session's history is a list-append object. The test writes down every answer it
got (``Ledger``: a 202 and its turn id and seq, a cancel, an endpoint subscribed) while
faults are injected; at the end ``observe_end`` reads every session the ledger names,
and ``check`` reports each violation with its ``Kind``:

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

import json
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from shared.channels.endpoints import DEFAULT_FAILURE_REPLY, PLATFORMS
from shared.channels.platform import ChannelName
from shared.channels.split import split
from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store.outbox import EVENTS, EventName
from shared.store.records import TERMINAL_STATUSES, ChannelRoute, TurnKind
from tests.support.platforms import Sent
from tests.support.receiver import Received
from tests.support.turn_checker import SessionRun, TurnView, check_turns, observe

Kind = Literal[
    "lost",
    "duplicated",
    "reordered",
    "foreign",
    "stuck",
    "seq_mismatch",
    "cancel_ignored",
    "webhook_missing",
    "webhook_duplicated",
    "webhook_uncommitted",
    "reply_missing",
    "reply_duplicated",
    "reply_uncommitted",
    "strategy",
]
KINDS: tuple[Kind, ...] = get_args(Kind)
SessionKey = tuple[str, str]  # (tenant, session)
Where = tuple[str, str, str | None]  # (endpoint id or "", chat, thread): where a reply goes
Prompt = list[dict[str, Any]]

CANARY = re.compile(r"canary=([0-9a-f]{16})")  # as written by checker.message_for
# check_turns findings this module reports under a kind of its own.
_COVERED = re.compile(
    r"is stuck|history holds \S+ \d+ times|history holds a foreign|missing from history"
    r"|not in acceptance order"
)


@dataclass(frozen=True)
class Violation:
    kind: Kind
    detail: str  # names the tenant/session and the turn

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class Entry:
    """One turn a client was told was accepted (``certain``), or one request whose answer
    never came (not ``certain``: it may or may not have become a turn). ``turn_id`` and
    ``seq`` are None when the client was not told them (a channel message): the turn is
    then found by its content."""

    tenant: str
    session: str
    content: str
    turn_id: str | None = None
    seq: int | None = None
    kind: TurnKind = "message"
    strategy: str | None = None  # None: not asked (the session's default)
    webhook: str | None = None
    channel: ChannelRoute | None = None
    certain: bool = True


@dataclass(frozen=True)
class Cancel:
    tenant: str
    session: str
    turn_id: str
    status: str | None  # the status the cancel answered with (None: no answer came)


@dataclass(frozen=True)
class Bot:
    """A channel endpoint as far as replies go. ``sender``: how the platforms' fake names
    the bot (``Sent.sender``), to tell apart bots that share chat ids; ``channel``: its
    platform, whose length limit splits long replies."""

    endpoint_id: str
    sender: str | None = None
    failure_reply: str | None = DEFAULT_FAILURE_REPLY
    channel: ChannelName | None = None


@dataclass
class Ledger:
    """What clients were told, recorded as they were told it; safe from many threads.

    Record a turn only once its answer came: for turns without a told seq, the order of
    the calls for one session is taken as the order the messages were accepted in. A
    replay (the same turn id again, e.g. an ``Idempotency-Key`` retry) is one turn.
    Subscribe tenants before their first turn: turns committed earlier owe no event.
    """

    entries: list[Entry] = field(default_factory=list)
    cancels: list[Cancel] = field(default_factory=list)
    subscriptions: dict[str, frozenset[str]] = field(default_factory=dict)
    bots: dict[str, Bot] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _ids: set[str] = field(default_factory=set, repr=False, compare=False)

    def accepted(
        self,
        tenant: str,
        session: str,
        turn_id: str | None,
        seq: int | None,
        content: str,
        strategy: str | None = None,
        webhook: str | None = None,
        channel: ChannelRoute | None = None,
    ) -> None:
        """A 202 (or a platform's message acknowledged): the turn must end terminal."""
        self._add(Entry(tenant, session, content, turn_id, seq, "message", strategy, webhook,
                        channel))  # fmt: skip

    def cleared(self, tenant: str, session: str, turn_id: str, seq: int | None = None) -> None:
        """A session clear was accepted (a turn of kind ``clear``)."""
        self._add(Entry(tenant, session, "", turn_id, seq, "clear"))

    def indeterminate(
        self,
        tenant: str,
        session: str,
        content: str,
        webhook: str | None = None,
        channel: ChannelRoute | None = None,
    ) -> None:
        """A request whose answer never came: its turn may exist, or not."""
        entry = Entry(tenant, session, content, webhook=webhook, channel=channel, certain=False)
        self._add(entry)

    def cancelled(
        self, tenant: str, session: str, turn_id: str, status: str | None = "cancelled"
    ) -> None:
        """A cancel was asked for and answered with the turn in ``status``: ``cancelled``
        means the turn must end cancelled (a finished turn is answered as it was; None:
        no answer came). Either way the turn may end cancelled at a client's request."""
        with self._lock:
            self.cancels.append(Cancel(tenant, session, turn_id, status))

    def subscribed(self, tenant: str, events: Iterable[EventName] = EVENTS) -> None:
        """The tenant has an enabled webhook endpoint taking ``events``."""
        with self._lock:
            self.subscriptions[tenant] = self.subscriptions.get(tenant, frozenset()) | set(events)

    def bot(
        self,
        endpoint_id: str,
        *,
        sender: str | None = None,
        failure_reply: str | None = DEFAULT_FAILURE_REPLY,
        channel: ChannelName | None = None,
    ) -> None:
        """How a channel endpoint replies (unrecorded: no sender, the default failure reply)."""
        with self._lock:
            self.bots[endpoint_id] = Bot(endpoint_id, sender, failure_reply, channel)

    def sessions(self) -> list[SessionKey]:
        """Every session the ledger names, in the order first named."""
        with self._lock:
            return list(dict.fromkeys((e.tenant, e.session) for e in self.entries))

    def by_session(self) -> dict[SessionKey, list[Entry]]:
        """Each session's entries, in the order recorded."""
        grouped: dict[SessionKey, list[Entry]] = defaultdict(list)
        with self._lock:
            for e in self.entries:
                grouped[(e.tenant, e.session)].append(e)
        return dict(grouped)

    def _add(self, entry: Entry) -> None:
        with self._lock:
            if entry.turn_id is not None:
                if entry.turn_id in self._ids:
                    return
                self._ids.add(entry.turn_id)
            self.entries.append(entry)


@dataclass(frozen=True)
class Hook:
    """One webhook delivery as a receiver got it; ``tenant``: whose receiver, if known."""

    webhook_id: str
    body: dict[str, Any]
    tenant: str | None = None

    @property
    def data(self) -> dict[str, Any]:
        data = self.body.get("data")
        return data if isinstance(data, dict) else {}

    @property
    def turn_id(self) -> str:
        return str(self.data.get("id"))

    @property
    def event(self) -> str:
        return str(self.body.get("type"))


@dataclass(frozen=True)
class Send:
    """One message a platform accepted; ``sender`` as in ``Sent``, if known."""

    chat: str
    text: str
    thread: str | None = None
    sender: str | None = None
    reply_id: str | None = None  # a resend of one reply keeps it: at least once


@dataclass
class End:
    """What a run left: each session's turns and history, deliveries, sends, prompts."""

    runs: dict[SessionKey, SessionRun]
    hooks: list[Hook] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    prompts: list[Prompt] | None = None


def hook_of(received: Received, tenant: str | None = None) -> Hook:
    """A receiver's record as a delivery (a body that is not JSON reads as ``{}``)."""
    headers = {k.lower(): v for k, v in received.headers.items()}
    try:
        body = json.loads(received.body)
    except ValueError:
        body = {}
    return Hook(headers.get("webhook-id", ""), body if isinstance(body, dict) else {}, tenant)


def send_of(sent: Sent | Send | tuple[str, str]) -> Send:
    """A platform send; a ``(chat, text)`` pair is a send to a chat without threads."""
    if isinstance(sent, Send):
        return sent
    if isinstance(sent, Sent):
        return Send(sent.chat, sent.text, sent.thread, sent.sender, sent.reply_id or None)
    return Send(sent[0], sent[1])


def observe_end(
    client: Any,
    settings: Settings,
    ledger: Ledger,
    *,
    received: Iterable[Received] | Mapping[str, Iterable[Received]] = (),
    sent: Iterable[Sent | Send | tuple[str, str]] = (),
    prompts: Sequence[Prompt] | None = None,
) -> End:
    """Read every session the ledger names (a sync ``redis.Redis`` that decodes
    responses). ``received``: every delivery, or each tenant's receiver's by tenant."""
    runs = {
        (tenant, session): observe(client, SessionKeys(settings.key_prefix, tenant, session))
        for tenant, session in ledger.sessions()
    }
    if isinstance(received, Mapping):
        hooks = [hook_of(r, tenant) for tenant, rs in received.items() for r in rs]
    else:
        hooks = [hook_of(r) for r in received]
    return End(runs, hooks, [send_of(s) for s in sent], None if prompts is None else [*prompts])


# -- checking ----------------------------------------------------------------------------


def check(ledger: Ledger, end: End) -> list[Violation]:
    """Every violation found; empty when clean."""
    owners = _owners(ledger)
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
    found += _check_hooks(ledger, end.hooks, matched)
    found += _check_replies(ledger, end.sends, matched, owners)
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


def _name(key: SessionKey) -> str:
    return f"{key[0]}/{key[1]}"


def _owners(ledger: Ledger) -> dict[str, SessionKey]:
    """Each canary the ledger sent, and its session."""
    return {
        canary: (e.tenant, e.session)
        for e in ledger.entries
        for canary in CANARY.findall(e.content)
    }


def _strangers(text: str, key: SessionKey, owners: Mapping[str, SessionKey]) -> set[str]:
    """The sessions other than ``key`` whose canaries ``text`` holds ("?": never sent)."""
    found = {_name(owners[c]) if c in owners else "?" for c in CANARY.findall(text)}
    return found - {_name(key)}


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
    name = _name(key)
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
    name = _name(key)
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
    name = _name(key)
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
        strangers = _strangers(content, key, owners)
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
        sessions = {_name(owners[c]) if c in owners else "?" for c in CANARY.findall(text)}
        if len(sessions) > 1 or "?" in sessions:
            detail = f"prompt {i} holds messages of {sorted(sessions)} ('?': never sent)"
            found.append(Violation("foreign", detail))
    return found


def _owes_event(ledger: Ledger, entry: Entry, event: str) -> bool:
    return entry.webhook is not None or event in ledger.subscriptions.get(entry.tenant, ())


def _check_hooks(
    ledger: Ledger, hooks: list[Hook], matched: Mapping[str, tuple[Entry, TurnView]]
) -> list[Violation]:
    found: list[Violation] = []
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)  # (turn, event) -> webhook ids
    for hook in hooks:
        wrong = _judge_hook(hook, matched)
        if wrong is not None:
            found.append(wrong)
        if hook.turn_id in matched and (wrong is None or wrong.kind != "foreign"):
            ids[(hook.turn_id, hook.event)].add(hook.webhook_id)
    for (turn_id, event), seen in ids.items():
        if len(seen) > 1:
            entry, _ = matched[turn_id]
            name = _name((entry.tenant, entry.session))
            detail = f"{name}: {turn_id}'s {event} under webhook ids {sorted(seen)}"
            found.append(Violation("webhook_duplicated", detail))
    for entry, view in matched.values():
        event = f"turn.{view.status}"
        owed = view.kind == "message" and view.status in TERMINAL_STATUSES
        if owed and _owes_event(ledger, entry, event) and (view.id, event) not in ids:
            name = _name((entry.tenant, entry.session))
            found.append(Violation("webhook_missing", f"{name}: {view.id}'s {event} never came"))
    return found


def _judge_hook(hook: Hook, matched: Mapping[str, tuple[Entry, TurnView]]) -> Violation | None:
    """What is wrong with one delivery: for no known turn, for another session (foreign),
    or not what the turn's record says (event, status, output)."""
    if hook.turn_id not in matched:
        detail = f"{hook.webhook_id}: {hook.event} for {hook.turn_id}, a turn the ledger lacks"
        return Violation("webhook_uncommitted", detail)
    entry, view = matched[hook.turn_id]
    name = _name((entry.tenant, entry.session))
    data = hook.data
    if hook.tenant not in (None, entry.tenant) or data.get("session_id") != entry.session:
        to = f"{hook.tenant or '?'}/{data.get('session_id')}"
        return Violation("foreign", f"{name}: {view.id}'s {hook.event} reached {to}")
    said = (hook.event, data.get("status"), (data.get("output") or {}).get("content"))
    if view.status in TERMINAL_STATUSES and said == (
        f"turn.{view.status}",
        view.status,
        view.output,
    ):
        return None
    detail = f"{name}: {view.id}'s {hook.event} says {said[1]}, stored {view.status}"
    return Violation("webhook_uncommitted", detail)


def _reply_text(ledger: Ledger, route: ChannelRoute, view: TurnView) -> str | None:
    """What a channel turn owes its chat (None: nothing); see ``lane.replies_for``."""
    if view.answered_by is not None:
        return None
    if view.status == "completed":
        return view.output
    if view.status == "failed":
        bot = ledger.bots.get(route.endpoint_id) or Bot(route.endpoint_id)
        return bot.failure_reply
    return None


def _parts(ledger: Ledger, endpoint_id: str, text: str) -> list[str]:
    bot = ledger.bots.get(endpoint_id)
    if bot is None or bot.channel is None:
        return [text.strip()] if text.strip() else []
    return split(text, PLATFORMS[bot.channel].max_chars)


def _where_of_route(ledger: Ledger, route: ChannelRoute) -> Where:
    bot = ledger.bots.get(route.endpoint_id)
    known = bot is not None and bot.sender is not None
    return (route.endpoint_id if known else "", route.chat, route.thread)


def _where_of_send(ledger: Ledger, send: Send) -> Where:
    bots = [b.endpoint_id for b in ledger.bots.values() if b.sender is not None]
    endpoint = next((e for e in bots if ledger.bots[e].sender == send.sender), "")
    return (endpoint, send.chat, send.thread)


def _chat(where: Where) -> str:
    endpoint, chat, thread = where
    return f"chat {chat}" + (f" thread {thread}" if thread else "") + f" of {endpoint or '?'}"


def _check_replies(
    ledger: Ledger,
    sends: list[Send],
    matched: Mapping[str, tuple[Entry, TurnView]],
    owners: Mapping[str, SessionKey],
) -> list[Violation]:
    owed: dict[tuple[Where, str], list[str]] = defaultdict(list)  # -> the turns owing it
    chats: dict[Where, set[SessionKey]] = defaultdict(set)
    for entry, view in matched.values():
        if entry.channel is None:
            continue
        where = _where_of_route(ledger, entry.channel)
        chats[where].add((entry.tenant, entry.session))
        text = _reply_text(ledger, entry.channel, view)
        for part in _parts(ledger, entry.channel.endpoint_id, text or ""):
            owed[(where, part)].append(view.id)
    resent = {s.reply_id for s in sends if s.reply_id}
    once = [s for s in sends if not s.reply_id] + [
        next(s for s in sends if s.reply_id == reply_id) for reply_id in sorted(resent)
    ]  # a reply sent again (its sender died before noting it was sent) is still one reply
    got = Counter((_where_of_send(ledger, s), s.text) for s in once)
    found: list[Violation] = []
    for (where, text), turns in owed.items():
        n, want = got[(where, text)], len(turns)
        if n != want:
            kind: Kind = "reply_missing" if n < want else "reply_duplicated"
            detail = f"{_chat(where)}: {text[:40]!r} of {turns} sent {n} times, owed {want}"
            found.append(Violation(kind, detail))
    for (where, text), n in got.items():
        if (where, text) not in owed:
            detail = f"{_chat(where)}: {text[:40]!r} ({n}x) answers no committed turn"
            found.append(Violation("reply_uncommitted", detail))
        if len(chats[where]) == 1:
            (key,) = chats[where]
            strangers = _strangers(text, key, owners)
            if strangers:
                detail = f"{_chat(where)} ({_name(key)}) got messages of {sorted(strangers)}"
                found.append(Violation("foreign", detail))
    return found


def _check_strategy(end: End) -> list[Violation]:
    """``check_turns`` over every session, less what the kinds above report (a group
    missing a message or its reply is ``lost``, not also "not together")."""
    runs = {_name(key): run for key, run in end.runs.items()}
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
