"""The per-turn event stream: status changes, token deltas and the final event.

Entries are ``{"type": "status" | "delta" | "final", "data": <JSON>}``. Deltas carry the
attempt that produced them, so a reader can drop deltas of an attempt that was retried.
The final event is written by ``commit.lua`` in the same step that commits the turn.
"""

from __future__ import annotations

import json
import time
from typing import Any

from shared.errors import LockLost
from shared.keys import SessionKeys

FINAL = "final"


class DeltaWriter:
    """Buffers token deltas and appends them to the stream at most every ``flush_s``.

    Appends are fenced (``delta.lua``): once the session lock is no longer this worker's,
    nothing more is written and ``LockLost`` is raised. Whatever is still buffered when
    the turn ends is handed to the commit script (``take_tail``), so a fast reply costs
    no extra round trip.
    """

    def __init__(
        self,
        scripts: Any,
        keys: SessionKeys,
        token: str,
        turn_id: str,
        attempt: int,
        flush_s: float,
    ) -> None:
        self._scripts = scripts
        self._keys = [keys.lock, keys.events(turn_id)]
        self._token = token
        self._attempt = attempt
        self._flush_s = flush_s
        self.try_number = 0
        self._buffer: list[str] = []
        self._since = time.monotonic()

    def retry(self) -> None:
        """A new model try begins: drop unsent text; later deltas carry the next ``try``."""
        self._buffer.clear()
        self.try_number += 1

    def write(self, text: str) -> None:
        if not text:
            return
        self._buffer.append(text)
        if time.monotonic() - self._since >= self._flush_s:
            self.flush()

    def flush(self) -> None:
        tail = self.take_tail()
        if not tail:
            return
        data = json.dumps({"attempt": self._attempt, "try": self.try_number, "text": tail})
        if not self._scripts.delta(keys=self._keys, args=[self._token, data]):
            raise LockLost("session lock lost while streaming")

    def take_tail(self) -> str:
        tail = "".join(self._buffer)
        self._buffer.clear()
        self._since = time.monotonic()
        return tail


async def wait_for_final(
    client: Any, keys: SessionKeys, turn_id: str, timeout_s: float
) -> dict[str, Any] | None:
    """Block (asyncio) until the turn's final event exists or ``timeout_s`` passes.

    Reads the stream from its start, so a final event written before the call is seen:
    no notification can be missed. Returns the final event's data (status, attempt,
    timestamps, output or error), or None when the time ran out.
    """
    key = keys.events(turn_id)
    deadline = time.monotonic() + timeout_s
    last_id = "0-0"
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            return None
        reply = await client.xread({key: last_id}, count=256, block=remaining_ms)
        if not reply:
            return None
        for _stream, entries in reply:
            for entry_id, fields in entries:
                last_id = entry_id
                if fields.get("type") == FINAL:
                    final: dict[str, Any] = json.loads(fields["data"])
                    return final
