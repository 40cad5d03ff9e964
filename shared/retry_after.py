"""How long a server asked to be left alone: a ``Retry-After`` header (seconds, or an HTTP
date), or a number a platform puts in its body (Telegram's ``retry_after``)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

MAX_WAIT_S = 3600.0  # the longest pause an answer can impose


def wait_s(value: object) -> float | None:
    """``value`` as seconds in [0, ``MAX_WAIT_S``]; None unless a finite number."""
    if not isinstance(value, int | float | str) or isinstance(value, bool):
        return None
    try:
        found = float(value)
    except ValueError:
        return None
    return min(max(found, 0.0), MAX_WAIT_S) if math.isfinite(found) else None


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """The pause a server asked for in ``Retry-After`` (never negative, at most
    ``MAX_WAIT_S``), or None when it asked for none it could mean."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    found = wait_s(value)
    if found is not None:
        return found
    try:
        return wait_s(parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
