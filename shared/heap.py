"""The garbage collector, set for processes that hold thousands of connections.

CPython's full collection walks every object it tracks, holding the GIL throughout. In an
API process holding 1,000 event streams, full collections came every few seconds and took
100-245 ms each, and every event in flight waited for them (Redis -> client p99 ~200 ms
where it is ~20 ms otherwise; see docs/benchmarks.md). ``settle``, once a process has
started, collects once and freezes what survives: the objects that live as long as the
process (modules, the app and its schemas: ~330,000 in the API) leave the collector's
sight, so a full collection walks far less. It also makes full collections rare: CPython
runs one only after ``threshold2`` middle-generation collections *and* once the objects
promoted since the last one reach a quarter of the old generation; freezing shrinks that
generation, so by itself it would make full collections cheaper but more frequent, and
``threshold2`` goes from 10 to 1,000. The young generations are collected as often as
before, so short-lived reference cycles are still freed at once; cycles that grow old
wait for the next full collection. ``CHATLANE_SETTLE_HEAP=false`` leaves the collector
alone (a process that mounts the app among its own code).
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
