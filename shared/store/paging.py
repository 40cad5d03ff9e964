"""Newest-first pages of a sorted set scored by time, with a cursor that loses nothing."""

from __future__ import annotations

from typing import Any

CURSOR_PATTERN = r"^[0-9]{1,16}(:[\x21-\x7e]{1,300})?$"


def cursor(score_ms: int, member: str) -> str:
    """Where the next page starts: after this item (``<ms>:<id>``)."""
    return f"{score_ms}:{member}"


async def newest_first(
    client: Any, index: str, *, limit: int, before: str | None = None
) -> tuple[list[str], bool]:
    """Up to ``limit`` members of ``index``, highest score first (ties: highest member
    first, as Redis orders them), and whether more follow.

    ``before`` is a cursor: ``<ms>`` (items older than that) or ``<ms>:<id>`` (items after
    that one, also those of the same millisecond), so a page boundary that falls inside
    one millisecond skips nothing.
    """
    high = "+inf"
    ties: list[str] = []
    if before is not None:
        ms, _, last = before.partition(":")
        high = f"({ms}"
        if last:
            same = await client.zrange(index, ms, ms, byscore=True)
            ties = sorted((m for m in same if m < last), reverse=True)[: limit + 1]
    wanted = limit + 1 - len(ties)
    rest: list[str] = []
    if wanted > 0:
        rest = await client.zrange(
            index, high, "-inf", byscore=True, desc=True, offset=0, num=wanted
        )
    found = [*ties, *rest]
    return found[:limit], len(found) > limit
