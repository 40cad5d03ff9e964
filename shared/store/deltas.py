"""Token deltas of running turns, written to their sessions' events in batches.

Every turn a process runs writes its streamed text into a ``DeltaWriter``; one
``DeltaBatcher`` per process appends what all of them buffered, one ``delta`` event per
turn, in a single pipelined round trip every ``flush_s`` (sooner when a turn has
``TURN_BYTES`` waiting, and at once for a turn's first text). Each append is fenced by
its turn's lock token and stop generation: a writer whose lease is gone, or whose
attempt was stopped, gets nothing written, and its model call is cancelled.

Backpressure: when Redis is slow to answer and ``MAX_PENDING_BYTES`` of text is waiting
across the process, writers wait for the next flush to finish, so a slow Redis slows the
model streams down (their TCP windows fill) instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from shared.aio import event_set_within, stop_if_cancelled
from shared.store.lease import Lease
from shared.store.store import SessionStore

log = logging.getLogger(__name__)

TURN_BYTES = 8 * 1024
MAX_PENDING_BYTES = 4 * 1024 * 1024


class DeltaWriter:
    """One turn's streamed text on its way to the session's events.

    Deltas carry the attempt (a worker's start of the turn) and the ``try`` (the model
    request within that attempt), so a reader can drop the text of a try that was
    abandoned. A turn's first text is written at once, on its own (time to first
    token); the rest waits for the batch, and what is still buffered when the turn ends
    goes to the commit (``close``).
    """

    __slots__ = (
        "_batcher",
        "_buffer",
        "_first",
        "_flushed",
        "_head",
        "_reset",
        "_size",
        "attempt",
        "lease",
        "pack",
        "try_number",
        "turn_id",
    )

    def __init__(self, batcher: DeltaBatcher, lease: Lease, turn_id: str, attempt: int) -> None:
        self._batcher = batcher
        self.lease = lease
        self.turn_id = turn_id
        self.attempt = attempt
        self.try_number = 0
        self._buffer: list[str] = []
        self._size = 0
        self._first = True
        self._flushed: asyncio.Future[None] | None = None
        self.pack = lease.store.delta_packer(
            lease.keys, lease.token, turn_id, generation=lease.generation
        )
        self._reset: bytes | None = None
        self._head = b""
        self._set_head()

    def _set_head(self) -> None:
        self._head = b'{"attempt":%d,"try":%d,"text":' % (self.attempt, self.try_number)

    @property
    def pending(self) -> int:
        return self._size

    def retry(self) -> None:
        """A new model try begins: drop unsent text, announce (with the next flush, before
        any of the new try's text) that the abandoned try's text is void; later deltas
        carry the next ``try``."""
        self._batcher.forget_bytes(self._size)
        self._buffer.clear()
        self._size = 0
        lease = self.lease
        reset = lease.store.delta_packer(
            lease.keys, lease.token, self.turn_id, kind="reset", generation=lease.generation
        )
        self._reset = reset(
            orjson.dumps({"attempt": self.attempt, "try": self.try_number}).decode()
        )
        self.try_number += 1
        self._set_head()
        self._batcher.mark_waiting()

    async def write(self, text: str) -> None:
        if not text:
            return
        self.lease.check()
        self._buffer.append(text)
        size = len(text)
        self._size += size
        if self._first:  # the first token shows at once: time to first token matters most
            self._first = False
            self._batcher.eager(self)
        await self._batcher.added(self, size)

    def take(self) -> list[bytes]:
        """The appends of what is waiting (a reset, buffered text), packed for a flush."""
        out: list[bytes] = []
        if self._reset is not None:
            out.append(self._reset)
            self._reset = None
        if self._buffer:
            data = self._head + orjson.dumps("".join(self._buffer)) + b"}"
            self._buffer.clear()
            self._batcher.forget_bytes(self._size)
            self._size = 0
            out.append(self.pack(data.decode()))
        return out

    def flushing(self, future: asyncio.Future[None]) -> None:
        self._flushed = future

    async def close(self) -> str:
        """Stop taking part in flushes; wait for one already under way to land (so the
        commit's events come after it); return the text that was never flushed."""
        self._batcher.detach(self)
        if self._flushed is not None and not self._flushed.done():
            await asyncio.shield(self._flushed)
        if self._reset is not None:  # the new try's text goes with the commit: say it first
            reset, self._reset = self._reset, None
            await self.lease.store.send_packed([reset])
        tail = "".join(self._buffer)
        self._batcher.forget_bytes(self._size)
        self._buffer.clear()
        self._size = 0
        return tail


class DeltaBatcher:
    """Flushes every attached ``DeltaWriter`` together (see the module doc)."""

    def __init__(
        self,
        store: SessionStore,
        *,
        flush_s: float,
        turn_bytes: int = TURN_BYTES,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._store = store
        self._flush_s = flush_s
        self._turn_bytes = turn_bytes
        self._max_pending = max_pending_bytes
        self._writers: dict[DeltaWriter, None] = {}  # attached, in attach order
        self._pending = 0
        self._eager: dict[DeltaWriter, None] = {}  # flush these before the batch is due
        self._full = False  # flush everyone before the batch is due
        self._soon = asyncio.Event()
        self._flushed = asyncio.Event()
        self.flushes = 0
        self.fenced = 0  # batches refused: the writer's lease had passed to another worker
        self.max_pending_seen = 0

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def writer(self, lease: Lease, turn_id: str, attempt: int) -> DeltaWriter:
        writer = DeltaWriter(self, lease, turn_id, attempt)
        self._writers[writer] = None
        return writer

    def detach(self, writer: DeltaWriter) -> None:
        self._writers.pop(writer, None)

    def forget_bytes(self, size: int) -> None:
        self._pending -= size

    def mark_waiting(self) -> None:
        """Something other than text waits (a reset): flush soon, if unbatched at once."""
        if self._flush_s <= 0:
            self._soon.set()

    def eager(self, writer: DeltaWriter) -> None:
        """Write ``writer``'s text now, without the other turns' (which keep batching)."""
        self._eager[writer] = None
        self._soon.set()

    async def added(self, writer: DeltaWriter, size: int) -> None:
        self._pending += size
        self.max_pending_seen = max(self.max_pending_seen, self._pending)
        if self._flush_s <= 0 or writer.pending >= self._turn_bytes:
            self._full = True
            self._soon.set()
        while self._pending > self._max_pending:  # Redis is behind: wait for a flush
            self._flushed.clear()
            self._full = True
            self._soon.set()
            await self._flushed.wait()
        if self._flush_s <= 0:  # unbatched: the text is in Redis before write returns
            await self.flush()
            writer.lease.check()

    async def run(self) -> None:
        """Flush every ``flush_s`` (everyone, or sooner when asked), and the eager writers
        in between, until cancelled."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._flush_s
        while True:
            stop_if_cancelled()
            if self._flush_s > 0:
                await event_set_within(self._soon, max(due - loop.time(), 0.0))
            else:
                await self._soon.wait()
            self._soon.clear()
            everyone = self._full or self._flush_s <= 0 or loop.time() >= due
            eager, self._eager, self._full = self._eager, {}, False
            try:
                await self.flush(None if everyone else list(eager))
            except Exception:
                log.warning("writing token deltas failed; retrying next flush", exc_info=True)
                await asyncio.sleep(min(max(self._flush_s, 0.05), 1.0))
            if everyone:
                due = loop.time() + self._flush_s

    async def flush(self, only: list[DeltaWriter] | None = None) -> None:
        """Append every waiting delta (or ``only`` those writers') in one pipelined round
        trip."""
        writers: list[DeltaWriter] = []
        packed: list[bytes] = []
        chosen = list(self._writers) if only is None else [w for w in only if w in self._writers]
        for writer in chosen:
            for call in writer.take():
                writers.append(writer)
                packed.append(call)
        if not packed:
            self._flushed.set()
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for writer in writers:
            writer.flushing(done)
        try:
            results = await self._store.send_packed(packed)
        finally:
            done.set_result(None)
            self._flushed.set()
        self.flushes += 1
        for writer, appended in zip(writers, results, strict=True):
            if isinstance(appended, Exception):
                log.warning("a token delta was refused: %s", appended)
            elif appended == 0:
                self.fenced += 1
                writer.lease.mark_lost()
            elif appended == 2:
                writer.lease.stop()
