"""The ledger: what clients were told during a fault run, and what Redis, the webhook
receivers and the messaging platforms hold at its end.

Each session's history is a list-append object. The test writes down every answer it
got (``Ledger``: a 202 and its turn id and seq, a cancel, an endpoint subscribed) while
faults are injected; at the end ``observe_end`` reads every session the ledger names into
an ``End``, which ``tests.support.ledger_check.check`` holds against the ledger.

Which session a message belongs to is judged by its canary
(``tests.support.checker.message_for``), never by clocks.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from shared.channels.endpoints import DEFAULT_FAILURE_REPLY
from shared.channels.platform import ChannelName
from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store.outbox import EVENTS, EventName
from shared.store.records import ChannelRoute, TurnKind
from tests.support.platforms import Sent
from tests.support.receiver import Received
from tests.support.turn_checker import SessionRun, observe

# What a violation is; each kind is described in ``tests.support.ledger_check``.
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
Prompt = list[dict[str, Any]]

CANARY = re.compile(r"canary=([0-9a-f]{16})")  # as written by checker.message_for


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


# -- whose message -----------------------------------------------------------------------


def session_name(key: SessionKey) -> str:
    return f"{key[0]}/{key[1]}"


def canary_owners(ledger: Ledger) -> dict[str, SessionKey]:
    """Each canary the ledger sent, and its session."""
    return {
        canary: (e.tenant, e.session)
        for e in ledger.entries
        for canary in CANARY.findall(e.content)
    }


def strangers_in(text: str, key: SessionKey, owners: Mapping[str, SessionKey]) -> set[str]:
    """The sessions other than ``key`` whose canaries ``text`` holds ("?": never sent)."""
    found = {session_name(owners[c]) if c in owners else "?" for c in CANARY.findall(text)}
    return found - {session_name(key)}
