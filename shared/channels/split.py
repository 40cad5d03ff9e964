"""Splitting a reply that is longer than a platform takes in one message."""

from __future__ import annotations

# Where a cut reads best, best first: a paragraph, a line, a sentence, a word.
BREAKS = ("\n\n", "\n", ". ", "! ", "? ", " ")


def units(text: str) -> int:
    """The length platforms count: UTF-16 code units (an emoji is two)."""
    return len(text.encode("utf-16-le")) // 2


def split(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-16 code units, cut at the last
    paragraph, line, sentence or word break that fits (a word longer than a part is cut
    where it must be, never inside a character). Whitespace around cuts is dropped;
    joined with single spaces or line breaks, the parts read as the whole."""
    parts: list[str] = []
    rest = text.strip()
    while units(rest) > limit:
        head = _fitting(rest, limit)
        cut = max((head.rfind(b) + len(b) for b in BREAKS if head.rfind(b) > 0), default=0)
        if cut < len(head) // 2:  # a break that early wastes most of a message
            cut = len(head)
        piece = rest[:cut].strip()
        if piece:
            parts.append(piece)
        rest = rest[cut:].strip()
    if rest:
        parts.append(rest)
    return parts


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
