"""The session lock: a random token under ``SET NX PX``, renewed by a heartbeat.

Taking the lock happens inside ``begin.lua`` together with the mailbox head; this
module owns the token, the lease renewal and the release. The lock is an
optimisation for liveness only: safety comes from ``commit.lua`` checking the token
in the same atomic step that writes (fencing).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from shared.keys import SessionKeys

log = logging.getLogger(__name__)


def new_token() -> str:
    return secrets.token_hex(16)


def extend(scripts: Any, keys: SessionKeys, token: str, ttl_ms: int) -> bool:
    """Renew the lease; False means the lock is lost and this worker must stop writing."""
    return bool(scripts.extend(keys=[keys.lock], args=[token, ttl_ms]))


def release(scripts: Any, keys: SessionKeys, token: str, *, force: bool = False) -> int:
    """Drop the lock: 1 released, 0 not the holder, -1 refused because turns are pending."""
    return int(scripts.release(keys=[keys.lock, keys.mailbox], args=[token, "1" if force else "0"]))


@dataclass(eq=False)
class Lease:
    """One held lock. ``lost`` is set by the heartbeat when renewal fails."""

    keys: SessionKeys
    token: str
    lost: threading.Event = field(default_factory=threading.Event)


class LeaseKeeper:
    """One heartbeat thread per process renews every held lease each ``ttl / 3``.

    A lease whose renewal fails is marked ``lost``; the turn pipeline checks that flag
    between model chunks and abandons the call. Renewals of all leases go out in one
    pipeline, so the cost does not grow with a round trip per session.
    """

    def __init__(self, client: Any, scripts: Any, ttl_ms: int) -> None:
        self._client = client
        self._scripts = scripts
        self._ttl_ms = ttl_ms
        self._leases: set[Lease] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_renewal = time.monotonic()

    def hold(self, keys: SessionKeys, token: str) -> Lease:
        lease = Lease(keys, token)
        with self._guard:
            self._leases.add(lease)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="chatlane-heartbeat", daemon=True
                )
                self._thread.start()
        return lease

    def drop(self, lease: Lease) -> None:
        with self._guard:
            self._leases.discard(lease)

    def stop(self) -> None:
        self._stop.set()

    def renew_all(self) -> None:
        """One heartbeat: renew every lease in one pipelined round trip."""
        with self._guard:
            leases = list(self._leases)
        if not leases:
            self._last_renewal = time.monotonic()
            return
        pipe = self._client.pipeline(transaction=False)
        for lease in leases:
            self._scripts.extend(
                keys=[lease.keys.lock], args=[lease.token, self._ttl_ms], client=pipe
            )
        try:
            results = pipe.execute()
        except Exception:  # a Redis outage must not kill the heartbeat thread
            log.warning("lease renewal failed; retrying next beat", exc_info=True)
            if time.monotonic() - self._last_renewal > self._ttl_ms / 1000:
                for lease in leases:  # unrenewed for a whole lease: assume it is gone
                    lease.lost.set()
            return
        self._last_renewal = time.monotonic()
        for lease, renewed in zip(leases, results, strict=True):
            if not renewed:
                lease.lost.set()

    def _run(self) -> None:
        interval = self._ttl_ms / 3000
        while not self._stop.wait(interval):
            self.renew_all()
