"""What the session store's operations answer (and a turn's outcome, which the commit
takes): plain frozen values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from shared.store.records import Turn


@dataclass(frozen=True, slots=True)
class Accepted:
    """A turn on the mailbox. ``turn`` is the record just written (None for a replay,
    whose turn is read when needed); ``lock_held`` means a worker is draining the
    session and will find the turn without a wake-up."""

    turn_id: str
    replayed: bool
    lock_held: bool
    turn: Turn | None = None
    cancelled: tuple[tuple[str, int], ...] = ()
    """Turns this one's strategy cancelled: (turn id, characters of its message)."""


@dataclass(frozen=True, slots=True)
class Head:
    """The mailbox head as ``begin`` hands it to the lock holder: the turn (now
    ``running``, its ``attempt`` counted), the coalesced turns its model call also
    answers (``members``, in order; ``span``: the mailbox entries they cover), the
    session's history window, and the stop ``generation`` the commit must still find."""

    turn: Turn
    history: list[dict[str, Any]]
    generation: int = 0
    members: tuple[Turn, ...] = ()
    span: int = 1

    @property
    def group(self) -> tuple[Turn, ...]:
        """The head and its members: every turn one model call answers."""
        return (self.turn, *self.members)


@dataclass(frozen=True, slots=True)
class Debounce:
    """``begin`` found the head's coalesced group still inside its debounce window: the
    lock is held; begin again after ``wait_s``. ``generation``: the session's stop
    generation now (nothing this worker runs is void)."""

    wait_s: float
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What a cancel did: ``turn`` as it now is; ``changed`` False when it had already
    finished (left as it was); ``was_running``: its worker was told to stop."""

    turn: Turn
    changed: bool
    was_running: bool = False
    orphaned: bool = False
    """Turns are left on the mailbox and no worker holds the session: wake one."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a turn produced: ``completed`` with output and history messages, or
    ``failed`` with an error. ``tail`` is streamed text not yet written as a delta."""

    status: Literal["completed", "failed"]
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    messages: tuple[dict[str, Any], ...] = ()
    tail: str = ""
    tail_try: int = 0


@dataclass
class Page:
    items: list[Any] = field(default_factory=list)
    total: int = 0
    has_more: bool = False
