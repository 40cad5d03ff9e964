"""Values read from Redis, remembered per key for a short while in one process.

Per-tenant settings (webhook endpoints, double-texting defaults) are read on hot paths;
each is remembered for ``max_age_s``, so a change made through any replica takes effect
everywhere within that time. At most ``max_keys`` are kept: past that, all are dropped
and read again (a flood of tenants costs reads, never memory).
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

V = TypeVar("V")


class Recent(Generic[V]):
    def __init__(self, max_age_s: float, max_keys: int = 10_000) -> None:
        self._max_age_s = max_age_s
        self._max_keys = max_keys
        self._seen: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> V | None:
        """The value kept for ``key`` if it is fresh enough, else None."""
        found = self._seen.get(key)
        if found is None or time.monotonic() - found[0] >= self._max_age_s:
            return None
        return found[1]

    def put(self, key: str, value: V) -> None:
        if len(self._seen) >= self._max_keys:
            self._seen.clear()
        self._seen[key] = (time.monotonic(), value)

    def drop(self, key: str) -> None:
        """Forget ``key`` (this process just changed it)."""
        self._seen.pop(key, None)
