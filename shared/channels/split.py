"""Splitting a reply that is longer than a platform takes in one message."""

from __future__ import annotations

# Where a cut reads best, best first: a paragraph, a line, a sentence, a word.
BREAKS = ("\n\n", "\n", ". ", "! ", "? ", " ")


def units(text: str) -> int:
    """The length platforms count: UTF-16 code units (an emoji is two)."""
    return len(text.encode("utf-16-le")) // 2


def split(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-16 code units, each cut at the best
    break in the second half of what fits: a paragraph, else a line, a sentence, a word
    (a word longer than a part is cut where it must be, never inside a character).
    Whitespace around cuts is dropped; joined with single spaces or line breaks, the
    parts read as the whole."""
    parts: list[str] = []
    rest = text.strip()
    while units(rest) > limit:
        cut = _cut(_fitting(rest, limit))
        piece = rest[:cut].strip()
        if piece:
            parts.append(piece)
        rest = rest[cut:].strip()
    if rest:
        parts.append(rest)
    return parts


def _cut(head: str) -> int:
    """Where to end a part that can hold ``head``: after the best kind of break in its
    second half (a break earlier than that wastes most of a message), else at its end;
    never before its first character."""
    for brk in BREAKS:
        at = head.rfind(brk)
        if at >= len(head) // 2 and at > 0:
            return at + len(brk)
    return max(len(head), 1)


def _fitting(text: str, limit: int) -> str:
    """The longest prefix of ``text`` that is at most ``limit`` code units."""
    low, high = 0, min(len(text), limit)
    while low < high:
        mid = (low + high + 1) // 2
        if units(text[:mid]) <= limit:
            low = mid
        else:
            high = mid - 1
    return text[: max(low, 1)]
