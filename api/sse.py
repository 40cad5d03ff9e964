"""Server-Sent Events: a session's events as ``text/event-stream``, resumable.

Every event has the ``id`` of its entry in the session's event stream (``<ms>-<seq>``),
so a client that reconnects with ``Last-Event-ID`` (or ``?last_event_id=``) gets every
later event once, and none it already had.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated, Any, Literal

from fastapi import Header, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.responses import StreamingResponse

from shared.keys import SessionKeys
from shared.store import Event, EventHub, SessionStore, Turn
from shared.store.waiting import follow_events

EVENT_ID_PATTERN = r"^\d{1,19}-\d{1,19}$"  # below 2**64: a Redis stream id, never past its last
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
KEEPALIVE = b": keep-alive\n\n"
RETRY_MS = 1000


class StatusEvent(BaseModel):
    """``event: status`` — the turn was queued or started."""

    turn_id: str
    status: Literal["queued", "running"]
    seq: int
    attempt: int = Field(description="How many times a worker started the turn.")


class DeltaEvent(BaseModel):
    """``event: delta`` — text the model streamed, in order."""

    turn_id: str
    attempt: int
    try_: int = Field(alias="try", description="The model request within the attempt.")
    text: str


class ResetEvent(BaseModel):
    """``event: reset`` — the text streamed so far by this attempt (or only this try of
    it) will not be kept: drop it; the next deltas start the reply again."""

    turn_id: str
    attempt: int
    try_: int | None = Field(default=None, alias="try")


EVENTS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "An event stream: `status`, `delta` and `reset` events, then (for a turn) one "
            "`completed`, `failed` or `cancelled` event carrying the whole turn. Comments "
            "keep an idle connection open. Each event's `id` resumes the stream."
        ),
        "content": {
            "text/event-stream": {
                "schema": {
                    "oneOf": [
                        StatusEvent.model_json_schema(by_alias=True),
                        DeltaEvent.model_json_schema(by_alias=True),
                        ResetEvent.model_json_schema(by_alias=True),
                        Turn.model_json_schema(),
                    ]
                }
            }
        },
    }
}

LastEventIdHeader = Annotated[
    str | None,
    Header(alias="Last-Event-ID", pattern=EVENT_ID_PATTERN, description="Resume after this event."),
]
LastEventIdQuery = Annotated[
    str | None,
    Query(
        alias="last_event_id",
        pattern=EVENT_ID_PATTERN,
        description="As `Last-Event-ID`, for clients that cannot set headers.",
    ),
]


def resume_point(header: str | None, query: str | None) -> str:
    """Where a stream resumes (``"0-0"``: from the start); a malformed id is a 422."""
    value = header or query
    if not value:
        return "0-0"
    if not _EVENT_ID.fullmatch(value):
        raise RequestValidationError(
            [{"loc": ("header", "Last-Event-ID"), "msg": "not an event id", "type": "value_error"}]
        )
    return value


def encode(event: Event) -> bytes:
    """One event as SSE bytes (its data given the turn id, or the whole turn when final)."""
    name: str = event.type
    if name == "final":
        turn = Turn.from_json(event.data)
        name, data = turn.status, turn.model_dump_json()
    else:
        data = f'{{"turn_id":"{event.turn_id}",{event.data[1:]}'
    return f"id: {event.id}\nevent: {name}\ndata: {data}\n\n".encode()


async def open_stream(
    store: SessionStore,
    hub: EventHub,
    keys: SessionKeys,
    after: str,
    *,
    turn: Turn | None = None,
    idle_s: float = 15.0,
) -> StreamingResponse:
    """The response for a session's (or one turn's) events. The waiter's place is taken
    here, before the response starts, so the waiter cap answers a 503 problem."""
    stack = AsyncExitStack()
    watcher = await stack.enter_async_context(hub.watch(keys.channel))

    async def body() -> AsyncIterator[bytes]:
        first = b"retry: %d\n" % RETRY_MS  # with the first event: no event of its own
        try:
            async for event in follow_events(store, watcher, keys, after, turn=turn, idle_s=idle_s):
                if event is None:
                    yield KEEPALIVE
                    continue
                yield first + encode(event)
                first = b""
        finally:
            await stack.aclose()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
