"""The garbage collector, set for processes that hold thousands of connections.

CPython's full collection walks every object it tracks, holding the GIL throughout. In an
API process holding 1,000 event streams, full collections came every few seconds and took
100-245 ms each, and every event in flight waited for them (Redis -> client p99 ~200 ms
where it is ~20 ms otherwise; see docs/benchmarks.md). ``settle``, once a process has
started: the objects that live as long as the process (modules, the app and its schemas:
~330,000 in the API) leave the collector's sight, and a full collection comes after 1,000
middle-generation collections instead of 10. The young generations are collected as
often as before, so reference cycles are still freed, only later when they are old.
"""

from __future__ import annotations

import gc

FULL_AFTER = 1000
_settled = False


def settle() -> None:
    """Collect once, freeze what survives (it lives as long as the process), and make
    full collections rare. Once per process: later calls do nothing."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_AFTER)
