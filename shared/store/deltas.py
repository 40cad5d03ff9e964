"""Token deltas of a running turn, written to the session's events in small batches."""

from __future__ import annotations

import time

from shared.errors import LockLost
from shared.store.lease import Lease


class DeltaWriter:
    """Buffers streamed text and appends it as one ``delta`` event at most every
    ``flush_s`` seconds.

    Appends are fenced (``delta.lua``): once the lock is no longer this lease's, nothing
    more is written and ``LockLost`` is raised. Whatever is still buffered when the
    turn ends goes to the commit (``take_tail``), so a fast reply costs no extra round
    trip. Deltas carry the attempt (a worker's start of the turn) and the ``try`` (the
    model request within that attempt), so a reader can drop the text of a try that
    was abandoned.
    """

    def __init__(self, lease: Lease, turn_id: str, attempt: int, flush_s: float) -> None:
        self._lease = lease
        self._turn_id = turn_id
        self._attempt = attempt
        self._flush_s = flush_s
        self.try_number = 0
        self._buffer: list[str] = []
        self._since = time.monotonic()

    def retry(self) -> None:
        """A new model try begins: drop unsent text; later deltas carry the next ``try``."""
        self._buffer.clear()
        self.try_number += 1

    async def write(self, text: str) -> None:
        if not text:
            return
        self._buffer.append(text)
        if time.monotonic() - self._since >= self._flush_s:
            await self.flush()

    async def flush(self) -> None:
        tail = self.take_tail()
        if not tail:
            return
        lease = self._lease
        data = lease.store.delta_data(self._attempt, self.try_number, tail)
        if not await lease.store.append_delta(lease.keys, lease.token, self._turn_id, data):
            raise LockLost("session lock lost while streaming")

    def take_tail(self) -> str:
        tail = "".join(self._buffer)
        self._buffer.clear()
        self._since = time.monotonic()
        return tail
