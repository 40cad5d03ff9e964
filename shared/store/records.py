"""The typed shapes of what the session store holds: turn records, events, sessions.

A turn record is one JSON document in the session's ``turns`` hash. Python writes it
once (``queued_record``); the scripts move it through its states and set only the
state-machine fields (``seq``, ``status``, ``attempt``, ``output``, ``error`` and the
timestamps, all in ms). ``Turn`` reads it, and is also what the HTTP API shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.settings import Strategy

TurnStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
STRATEGIES: tuple[Strategy, ...] = ("enqueue", "reject", "interrupt", "rollback", "coalesce")
CancelReason = Literal["requested", "disconnected", "interrupted", "rolled_back"]
TurnKind = Literal["message", "clear"]
EventType = Literal["status", "delta", "reset", "final"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of every timestamp in the store."""
    return time.time_ns() // 1_000_000


class TurnOutput(BaseModel):
    content: str


class TurnError(BaseModel):
    code: str = Field(description="Machine-readable reason, e.g. `retries_exhausted`.")
    message: str


class Cancellation(BaseModel):
    reason: CancelReason = Field(
        description=(
            "`requested`: cancelled through the API; `disconnected`: its client closed the "
            "connection while waiting, with `cancel_on_disconnect`; `interrupted`: a later "
            "message with "
            "strategy `interrupt` (this turn's message stays in history); `rolled_back`: "
            "one with strategy `rollback` (this turn's message was dropped)."
        )
    )
    by: str | None = Field(default=None, description="The turn whose strategy cancelled it.")


class ChannelRoute(BaseModel):
    """Where a turn that came in over a messaging channel is answered."""

    endpoint_id: str = Field(description="The channel endpoint the message arrived at.")
    chat: str = Field(description="The platform's chat (Telegram chat, Slack channel, phone).")
    thread: str | None = Field(
        default=None, description="The thread or topic in that chat the reply goes to."
    )
    via: str | None = Field(
        default=None, description="The bot's own address the message was sent to (a number)."
    )
    message: str = Field(description="The platform's id of the message (its dedupe key).")


class Turn(BaseModel):
    """One chat turn: its input, status and result. Timestamps are stored as ms and
    shown as RFC 3339 date-times."""

    model_config = ConfigDict(frozen=True)

    id: str
    object: Literal["turn"] = "turn"
    session_id: str
    kind: TurnKind = Field(description="`message`, or `clear` for a session clear.")
    seq: int = Field(description="Position in the session: turns finish in this order.")
    status: TurnStatus
    attempt: int = Field(description="How many times a worker started this turn.")
    input: dict[str, Any] | None
    output: TurnOutput | None = None
    error: TurnError | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    webhook: str | None = Field(
        default=None, description="Where the turn's completion is also announced."
    )
    strategy: Strategy = Field(
        default="enqueue",
        description="What this message did to the session's pending turns (double texting).",
    )
    answered_by: str | None = Field(
        default=None,
        description=(
            "Coalesced: the turn whose model call answered this message too (its reply is "
            "this turn's `output`)."
        ),
    )
    cancellation: Cancellation | None = Field(
        default=None, description="Why the turn was cancelled (status `cancelled`)."
    )
    channel: ChannelRoute | None = Field(
        default=None,
        description="The messaging channel the message came from; the reply goes back there.",
    )
    debounce_ms: int = Field(default=0, exclude=True)
    crashes: int = Field(
        default=0, exclude=True, description="Attempts that died with their worker."
    )
    events_from: str | None = Field(
        default=None, exclude=True, description="The id of the turn's first event."
    )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        """Parse a stored record (or a final event's data, which is the same document)."""
        return cls.model_validate_json(raw)


def queued_record(
    turn_id: str,
    session_id: str,
    kind: str,
    input_doc: dict[str, Any] | None,
    created_ms: int,
    webhook: str | None = None,
    strategy: Strategy | None = None,
    debounce_ms: int | None = None,
    channel: ChannelRoute | None = None,
) -> dict[str, Any]:
    """The record ``accept.lua`` stores for a new turn (it adds ``seq``, and resolves an
    unset ``strategy`` / ``debounce_ms`` from the session's or the deployment's)."""
    return {
        "webhook": webhook,
        "channel": channel.model_dump() if channel is not None else None,
        "strategy": strategy,
        "debounce_ms": debounce_ms,
        "id": turn_id,
        "session_id": session_id,
        "kind": kind,
        "status": "queued",
        "attempt": 0,
        "input": input_doc,
        "output": None,
        "error": None,
        "created_at": created_ms,
        "started_at": None,
        "finished_at": None,
    }


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a session's event stream.

    ``data`` is JSON: ``status`` events carry ``{status, seq, attempt}``; ``delta`` events
    ``{attempt, try, text}``; ``reset`` events ``{attempt[, try]}``: the text streamed by
    that attempt (or only that try of it) is abandoned; the ``final`` event the whole
    finished turn record.
    """

    id: str
    turn_id: str
    type: EventType
    data: str

    @classmethod
    def from_notice(cls, payload: str) -> Event:
        """Parse a channel message: ``<entry id> <turn id> <type> <data>``."""
        entry_id, turn_id, kind, data = payload.split(" ", 3)
        return cls(entry_id, turn_id, kind, data)  # type: ignore[arg-type]

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> Event:
        return cls(entry_id, fields["turn"], fields["type"], fields["data"])  # type: ignore[arg-type]

    @property
    def position(self) -> tuple[int, int]:
        """The entry id as a number pair, for ordering."""
        return stream_position(self.id)


def stream_position(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``"<ms>-<seq>"``) as a number pair, for ordering."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


class Session(BaseModel):
    """A session's counters and timestamps."""

    id: str
    object: Literal["session"] = "session"
    turn_count: int = Field(description="Turns ever accepted in this session.")
    finished_turns: int = Field(description="Turns that reached a terminal status.")
    strategy: Strategy | None = Field(
        default=None, description="This session's default double-texting strategy, if set."
    )
    debounce_s: float | None = Field(
        default=None, description="This session's default coalescing debounce, if set."
    )
    pending_turns: int = Field(description="Turns queued or running.")
    message_count: int = Field(description="Messages in the history.")
    created_at: datetime
    updated_at: datetime = Field(description="The last turn accepted or finished.")
    last_event_id: str | None = Field(
        default=None,
        description=(
            "The newest event of the session's stream: pass it as `last_event_id` to "
            "follow the session from now on (after reading its history)."
        ),
    )
