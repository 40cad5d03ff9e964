"""Per-process memory of values read from Redis: fresh for a while, bounded, droppable."""

from __future__ import annotations

import time

from shared.recent import Recent


def test_a_value_is_kept_while_fresh_then_read_again() -> None:
    recent: Recent[list[str]] = Recent(0.05)
    assert recent.get("acme") is None
    recent.put("acme", [])
    assert recent.get("acme") == []  # an empty value is a value
    time.sleep(0.06)
    assert recent.get("acme") is None


def test_dropping_forgets_and_the_keys_kept_are_bounded() -> None:
    recent: Recent[int] = Recent(60, max_keys=3)
    for i in range(3):
        recent.put(f"t{i}", i)
    recent.drop("t0")
    assert recent.get("t0") is None and recent.get("t1") == 1
    recent.put("t3", 3)
    recent.put("t4", 4)  # a fourth key: everything older is forgotten
    assert [recent.get(f"t{i}") for i in range(5)] == [None, None, None, None, 4]
