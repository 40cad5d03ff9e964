"""The session lock as one object: a random token, a lease renewed by a heartbeat, a
``lost`` flag that cancels the work it guards, a stop of the attempt it runs (a cancel,
a double text), and release.

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

from shared.errors import LockLost, TurnStopped
from shared.keys import SessionKeys
from shared.store.store import SessionStore

log = logging.getLogger(__name__)


class Lease:
    """One worker's hold on one session's lock (compare redis-py's ``Lock``, plus fencing)."""

    __slots__ = (
        "_cancelled_for",
        "_guarded",
        "_noticed",
        "generation",
        "keys",
        "lost",
        "stopped",
        "store",
        "token",
    )

    def __init__(self, store: SessionStore, keys: SessionKeys) -> None:
        self.store = store
        self.keys = keys
        self.token = secrets.token_hex(16)
        self.lost = asyncio.Event()
        self.stopped = False
        self.generation = 0  # the session's stop generation the current attempt began in
        self._noticed = 0  # the newest stop generation a notice told of
        self._guarded: asyncio.Task[object] | None = None
        self._cancelled_for: type[LockLost] | type[TurnStopped] | None = None

    def mark_lost(self) -> None:
        """The lease could not be renewed: stop the guarded work at once."""
        if self.lost.is_set():
            return
        self.lost.set()
        self._cancel_guarded(LockLost)

    def stop(self, generation: int | None = None) -> None:
        """The attempt this lease runs was made void (its generation is behind
        ``generation``; None: surely): stop the guarded work at once."""
        if generation is not None:
            self._noticed = max(self._noticed, generation)
            if generation <= self.generation:
                return
        if self.stopped:
            return
        self.stopped = True
        self._cancel_guarded(TurnStopped)

    def _cancel_guarded(self, reason: type[LockLost] | type[TurnStopped]) -> None:
        if self._guarded is not None and self._cancelled_for is None:
            self._cancelled_for = reason
            self._guarded.cancel()

    def renewed(self, generation: int = 0) -> None:
        """``begin`` just (re)took the lock with this token, for an attempt in stop
        ``generation``."""
        self.lost.clear()
        self.generation = generation
        self.stopped = self._noticed > generation  # a notice that overtook begin's answer

    def check(self) -> None:
        """Raise ``LockLost`` or ``TurnStopped`` if the lease or its attempt is gone."""
        if self.lost.is_set():
            raise LockLost("session lock lost")
        if self.stopped:
            raise TurnStopped("the attempt was stopped")

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run the block as the work this lease protects: if the lease is lost (or the
        attempt stopped) meanwhile, the block is cancelled and ``LockLost`` (or
        ``TurnStopped``) raised in its place."""
        self.check()
        task = asyncio.current_task()
        assert task is not None
        self._guarded = task
        try:
            yield
        except asyncio.CancelledError:
            reason, self._cancelled_for = self._cancelled_for, None
            if reason is None:
                raise
            if task.uncancel() > 0:  # cancelled by someone else too: that wins
                raise
            raise reason("the session lock was lost, or the attempt stopped") from None
        finally:
            self._guarded = None
            self._cancelled_for = None

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
        self._by_session: dict[str, set[Lease]] = {}  # tenant:session -> its leases here
        self._last_renewal = time.monotonic()

    @asynccontextmanager
    async def keep(self, lease: Lease) -> AsyncIterator[Lease]:
        member = lease.keys.member
        self._leases.add(lease)
        self._by_session.setdefault(member, set()).add(lease)
        try:
            yield lease
        finally:
            self._leases.discard(lease)
            leases = self._by_session.get(member)
            if leases is not None:
                leases.discard(lease)
                if not leases:
                    del self._by_session[member]

    def held(self) -> frozenset[str]:
        """The sessions (``tenant:session``) whose leases this process renews."""
        return frozenset(self._by_session)

    def stop(self, member: str, generation: int) -> None:
        """A stop notice for a session (``tenant:session``): stop the attempt this process
        runs in it, if that attempt began before ``generation`` (every worker hears every
        notice: one lookup, not a scan of the leases)."""
        for lease in self._by_session.get(member, ()):
            lease.stop(generation)

    async def beat(self) -> None:
        """Renew every lease at once; mark lost those that are gone and stop those whose
        attempt was stopped (a stop notice this process missed)."""
        leases = list(self._leases)
        generations = [lease.generation for lease in leases]
        ttl = self._store.settings.lock_ttl_s
        # An answer that comes after the leases ran out is no use: wait no longer than that
        # (a connection a network fault left silent would otherwise hold the beat for the
        # socket timeout, while the model calls ran on past their leases).
        left = max(0.05, self._last_renewal + ttl - time.monotonic())
        try:
            async with asyncio.timeout(left):
                renewed = await self._store.renew(
                    [
                        (lease.keys, lease.token, g)
                        for lease, g in zip(leases, generations, strict=True)
                    ]
                )
        except Exception:  # a Redis outage must not end the heartbeat
            log.warning("lease renewal failed; retrying next beat", exc_info=True)
            if time.monotonic() - self._last_renewal >= ttl:
                for lease in leases:
                    lease.mark_lost()
            return
        self._last_renewal = time.monotonic()
        for lease, sent, answer in zip(leases, generations, renewed, strict=True):
            if answer == 0:
                lease.mark_lost()
            elif answer == 2:
                lease.stop(sent + 1)  # void if the worker began anew meanwhile

    async def run(self) -> None:
        """Beat until cancelled."""
        interval = self._store.settings.lock_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            await self.beat()
