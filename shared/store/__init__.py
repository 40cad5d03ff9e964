"""The session store: the only code that knows session keys and scripts.

``SessionStore`` (accept, begin, commit, cancel, read, list, clear) and what it answers
(``results``), ``Lease`` and ``Heartbeat`` (the session lock as one object),
``DeltaWriter`` (token deltas), ``EventHub`` and ``wait_for_turn`` (waiting without a
connection per waiter), ``Sweep`` (stalled sessions), ``history`` (LangChain's view of a
session's messages), ``records`` (the typed turn record, events, sessions), ``defaults``
(tenants' double-texting defaults).
"""

from shared.store.defaults import TurnDefaults
from shared.store.deltas import DeltaBatcher, DeltaWriter
from shared.store.lease import Heartbeat, Lease
from shared.store.records import Event, Session, Turn, TurnError, TurnOutput
from shared.store.results import Accepted, Cancelled, Debounce, Head, Outcome, Page
from shared.store.store import SessionStore
from shared.store.sweep import Sweep
from shared.store.waiting import EventHub, Watcher, wait_for_turn

__all__ = [
    "Accepted",
    "Cancelled",
    "Debounce",
    "DeltaBatcher",
    "DeltaWriter",
    "Event",
    "EventHub",
    "Head",
    "Heartbeat",
    "Lease",
    "Outcome",
    "Page",
    "Session",
    "SessionStore",
    "Sweep",
    "Turn",
    "TurnDefaults",
    "TurnError",
    "TurnOutput",
    "Watcher",
    "wait_for_turn",
]
