"""One strict reading of every JSON request body, before any route parses it again.

Two parsers must never read one body two ways, and no body may cost more to read than
it weighs. So a body is refused (``Refusal``, a 400 problem) when it is not UTF-8, not
JSON, repeats a key within one object (at any depth), nests deeper than ``MAX_DEPTH``,
holds a number no 64-bit integer or finite double can carry (or ``NaN``/``Infinity``),
or a string with NUL or a lone surrogate (text that Redis, logs or a model API would
each treat differently). Refusals never echo the input.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from api.problems import Refusal

MAX_DEPTH = 32
MAX_NUMBER_CHARS = 40
_INT64 = 2**63
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class _Invalid(ValueError):
    """Raised from inside the parser's hooks; carries the problem to answer."""

    def __init__(self, kind: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.title, self.detail = kind, title, detail


def check_json(body: bytes) -> None:
    """Return when ``body`` is one strict JSON document; else raise ``Refusal`` (400)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        _refuse("malformed-json", "Malformed JSON", "The request body is not UTF-8.")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except _Invalid as invalid:
        _refuse(invalid.kind, invalid.title, invalid.detail)
    except RecursionError:
        _too_deep()
    except ValueError:  # JSONDecodeError, and int() past Python's digit limit
        _refuse("malformed-json", "Malformed JSON", "The request body is not valid JSON.")
    _walk(value)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Invalid(
            "duplicate-json-key",
            "Duplicate JSON key",
            "An object in the request body names the same key more than once.",
        )
    return found


def _int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _number()
    value = int(literal)
    if not -_INT64 <= value < _INT64:
        raise _number()
    return value


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _number()
    value = float(literal)
    if math.isinf(value):
        raise _number()
    return value


def _constant(literal: str) -> NoReturn:
    raise _Invalid("malformed-json", "Malformed JSON", f"{literal} is not JSON.")


def _number() -> _Invalid:
    return _Invalid(
        "json-number-out-of-range",
        "JSON number out of range",
        "A number in the request body does not fit a 64-bit integer or a finite double.",
    )


def _walk(value: Any) -> None:
    """Depth and text checks, without recursion (the parser already bounded the depth
    by Python's recursion limit; this bounds it by ``MAX_DEPTH``)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _BAD_TEXT.search(item):
                _bad_text()
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                _too_deep()
            if isinstance(item, dict):
                for key, child in item.items():
                    if _BAD_TEXT.search(key):
                        _bad_text()
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _too_deep() -> NoReturn:
    _refuse(
        "json-too-deep",
        "JSON nested too deeply",
        f"The request body nests arrays and objects more than {MAX_DEPTH} deep.",
    )


def _bad_text() -> NoReturn:
    _refuse(
        "invalid-json-text",
        "Invalid text in JSON",
        "A string in the request body holds NUL or an unpaired surrogate (\\u0000, "
        "\\ud800-\\udfff).",
    )


def _refuse(kind: str, title: str, detail: str) -> NoReturn:
    raise Refusal(400, title, detail, kind=kind)
