"""Splitting a long reply into parts a platform takes: lengths in UTF-16 code units, cuts
at the best break, nothing lost, no character broken."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.channels.split import split, units

EMOJI = "😀"  # two UTF-16 code units
FAMILY = "👨\u200d👩\u200d👧"  # three emoji joined: eight code units
CJK = "漢字かな"
COMBINING = "e\u0301a\u0308o\u0302"  # é ä ô as base letters and combining marks


def squeezed(text: str) -> str:
    """``text`` without any whitespace: what must survive splitting, in order."""
    return "".join(text.split())


def normalised(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("abc", 3),
        (EMOJI, 2),
        (FAMILY, 8),
        (CJK, 4),
        ("é", 1),
        ("e\u0301", 2),
        ("𝄞", 2),
        ("\U0010ffff", 2),
    ],
)
def test_units_counts_utf16_code_units(text: str, expected: int) -> None:
    assert units(text) == expected


@pytest.mark.parametrize("text", ["", " ", "   \n\n\t  ", "\u3000\u2003"])
def test_empty_and_whitespace_only_text_has_no_parts(text: str) -> None:
    assert split(text, 10) == []


def test_text_within_the_limit_is_one_part_stripped() -> None:
    assert split("  hello world \n", 11) == ["hello world"]
    assert split("x" * 50, 50) == ["x" * 50]


def test_one_unit_over_the_limit_makes_two_parts() -> None:
    assert split("hello world", 10) == ["hello", "world"]


def test_emoji_count_twice_against_the_limit() -> None:
    text = EMOJI * 10  # 20 units
    parts = split(text, 5)
    assert parts == [EMOJI * 2] * 5
    assert all(units(p) == 4 for p in parts)


def test_a_surrogate_pair_is_never_cut() -> None:
    text = "a" + EMOJI * 6
    for limit in range(4, 14):
        parts = split(text, limit)
        assert "".join(parts) == text, limit
        for part in parts:
            part.encode("utf-16-le")  # no lone surrogate
            assert units(part) <= limit


@pytest.mark.timeout(0.5)
@pytest.mark.parametrize(("text", "limit"), [("ab", 1), (EMOJI * 2, 3)])
def test_a_limit_that_fits_one_character_at_a_time_still_ends(text: str, limit: int) -> None:
    parts = split(text, limit)
    assert "".join(parts) == text


def test_a_word_longer_than_the_limit_is_cut_where_it_must_be() -> None:
    word = "x" * 25
    assert split(word, 10) == ["x" * 10, "x" * 10, "x" * 5]
    assert split(f"go {word} now", 10) == ["go xxxxxxx", "x" * 10, "xxxxxxxx", "now"]


def test_a_break_in_the_first_half_of_a_part_is_not_used() -> None:
    """A cut that early would waste most of a message: the long word is cut instead."""
    parts = split("a " + "b" * 30, 20)
    assert parts[0] == "a " + "b" * 18
    assert all(units(p) <= 20 for p in parts)


def test_cuts_at_the_last_word_break_that_fits() -> None:
    text = "the quick brown fox jumps over the lazy dog"
    parts = split(text, 16)
    assert parts == ["the quick brown", "fox jumps over", "the lazy dog"]


def test_a_sentence_cut_keeps_its_full_stop() -> None:
    parts = split("One two three. Four five six seven.", 16)
    assert parts[0] == "One two three."


def test_a_paragraph_that_ends_just_in_time_is_its_own_part() -> None:
    first = "word " * 11 + "end"  # 58 characters
    second = "more " * 30
    parts = split(f"{first}\n\n{second}", 60)
    assert parts[0] == first
    assert all(units(p) <= 60 for p in parts)


@pytest.mark.parametrize("separator", ["\n\n", "\n", ". "], ids=["paragraph", "line", "sentence"])
def test_prefers_a_paragraph_line_or_sentence_break_to_a_later_word_break(separator: str) -> None:
    first = "alpha beta gamma delta epsilon zeta eta theta iota kappa"  # 56 characters
    tail = "lambda mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega " * 2
    parts = split(first + separator + tail, 100)  # the break lies past half the part
    assert parts[0] == (first + separator).strip()


def test_prefers_a_paragraph_break_to_a_later_line_break() -> None:
    first = "A heading line\nand its first paragraph, long enough to matter"  # 61 characters
    parts = split(first + "\n\nsecond paragraph\nwith lines\nthat go on and on and on", 90)
    assert parts[0] == first


def test_parts_of_prose_read_as_the_whole() -> None:
    paragraph = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 6
    text = "\n\n".join([paragraph.strip()] * 4) + "\nLast line!  Done?  Yes."
    for limit in (40, 77, 100, 333):
        parts = split(text, limit)
        assert all(units(p) <= limit for p in parts)
        assert normalised(" ".join(parts)) == normalised(text), limit
        assert all(p == p.strip() and p for p in parts)


LETTERS = list("abcdefghij")
BREAKS = [" ", " ", " ", "\n", "\n\n", ". ", "! ", "? ", "\t"]
WIDE = [EMOJI, FAMILY, "漢", "字", "か", "\u0301", "\u0308", "e\u0301", "𝄞", "\u3000"]
alphabet = st.sampled_from([*LETTERS, *BREAKS, *WIDE])


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(alphabet, max_size=200),
    limit=st.integers(min_value=4, max_value=40),
)
@example(pieces=[EMOJI] * 7, limit=5)
@example(pieces=["\u0301"] * 9, limit=4)
def test_no_part_is_over_the_limit_and_nothing_is_lost(pieces: list[str], limit: int) -> None:
    text = "".join(pieces)
    parts = split(text, limit)
    for part in parts:
        assert part and part == part.strip()
        assert units(part) <= limit, (part, limit)
        part.encode("utf-16-le")
    assert squeezed("".join(parts)) == squeezed(text)
    if units(text.strip()) <= limit:
        assert parts == ([text.strip()] if text.strip() else [])


@settings(max_examples=150, deadline=None)
@given(
    words=st.lists(st.text(alphabet="abcxyz" + CJK, min_size=1, max_size=6), max_size=60),
    separators=st.lists(st.sampled_from([" ", "\n", "\n\n", ". "]), min_size=1),
    limit=st.integers(min_value=14, max_value=60),
)
def test_words_shorter_than_half_a_part_are_never_cut(
    words: list[str], separators: list[str], limit: int
) -> None:
    """Every word is far shorter than a part (and one code unit a character), so every
    cut is at a break: the parts, joined with spaces, are the text with its whitespace
    normalised."""
    text = "".join(w + separators[i % len(separators)] for i, w in enumerate(words))
    parts = split(text, limit)
    assert all(units(p) <= limit for p in parts)
    assert normalised(" ".join(parts)) == normalised(text)
