"""The session lock as one object: a random token, a lease renewed by a heartbeat, a
``lost`` flag that cancels the work it guards, and release.

The lock is taken inside ``begin.lua`` together with the mailbox head. It is an
optimisation for liveness only: safety comes from every write script checking the token
in the same atomic step that writes (fencing), so a worker that lost its lease can
never write, whatever it still believes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from shared.errors import LockLost
from shared.keys import SessionKeys
from shared.store.store import SessionStore

log = logging.getLogger(__name__)


class Lease:
    """One worker's hold on one session's lock (compare redis-py's ``Lock``, plus fencing)."""

    __slots__ = ("_cancelled_by_loss", "_guarded", "keys", "lost", "store", "token")

    def __init__(self, store: SessionStore, keys: SessionKeys) -> None:
        self.store = store
        self.keys = keys
        self.token = secrets.token_hex(16)
        self.lost = asyncio.Event()
        self._guarded: asyncio.Task[object] | None = None
        self._cancelled_by_loss = False

    def mark_lost(self) -> None:
        """The lease could not be renewed: stop the guarded work at once."""
        if self.lost.is_set():
            return
        self.lost.set()
        if self._guarded is not None:
            self._cancelled_by_loss = True
            self._guarded.cancel()

    def renewed(self) -> None:
        """``begin`` just (re)took the lock with this token."""
        self.lost.clear()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run the block as the work this lease protects: if the lease is lost meanwhile,
        the block is cancelled and ``LockLost`` raised in its place."""
        if self.lost.is_set():
            raise LockLost("session lock lost")
        task = asyncio.current_task()
        assert task is not None
        self._guarded = task
        try:
            yield
        except asyncio.CancelledError:
            if not self._cancelled_by_loss:
                raise
            self._cancelled_by_loss = False
            if task.uncancel() > 0:  # cancelled by someone else too: that wins
                raise
            raise LockLost("session lock lost during the turn") from None
        finally:
            self._guarded = None

    async def release(self, *, force: bool = False) -> int:
        """1 released, 0 not the holder, -1 refused because turns are pending."""
        return await self.store.release(self.keys, self.token, force=force)


class Heartbeat:
    """Renews every lease this process holds, all in one pipelined round trip, every
    third of the lease. A lease whose renewal fails is marked lost; so is every lease
    when Redis has not answered for a whole lease (it has surely expired)."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._leases: set[Lease] = set()
        self._last_renewal = time.monotonic()

    @asynccontextmanager
    async def keep(self, lease: Lease) -> AsyncIterator[Lease]:
        self._leases.add(lease)
        try:
            yield lease
        finally:
            self._leases.discard(lease)

    def held(self) -> frozenset[str]:
        """The sessions (``tenant:session``) whose leases this process renews."""
        return frozenset(lease.keys.member for lease in self._leases)

    async def beat(self) -> None:
        leases = list(self._leases)
        try:
            renewed = await self._store.renew([(lease.keys, lease.token) for lease in leases])
        except Exception:  # a Redis outage must not end the heartbeat
            log.warning("lease renewal failed; retrying next beat", exc_info=True)
            if time.monotonic() - self._last_renewal > self._store.settings.lock_ttl_s:
                for lease in leases:
                    lease.mark_lost()
            return
        self._last_renewal = time.monotonic()
        for lease, ok in zip(leases, renewed, strict=True):
            if not ok:
                lease.mark_lost()

    async def run(self) -> None:
        """Beat until cancelled."""
        interval = self._store.settings.lock_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            await self.beat()
