"""How much of a request body is read, and for how long."""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from api.problems import Refusal


def too_large(max_bytes: int) -> Refusal:
    return Refusal(
        413,
        "Request body too large",
        f"Request bodies are limited to {max_bytes} bytes.",
        kind="body-too-large",
        headers={"Connection": "close"},
    )


async def read_body(receive: Receive, *, max_bytes: int, timeout_s: float) -> bytes:
    """The whole request body, read within ``timeout_s`` seconds in all.

    Raises ``Refusal``: a 413 as soon as more than ``max_bytes`` arrived, a 408 when the
    body is not complete in time (a trickling client holds nothing for long); and
    ``ClientDisconnect`` when the client hung up. A declared ``Content-Length`` over the
    limit is refused by the caller before this reads a byte (so ``Expect: 100-continue``
    is never answered with ``100``).
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise Refusal(
            408,
            "Request timeout",
            f"The request body did not arrive within {timeout_s:g} s.",
            kind="body-timeout",
            headers={"Connection": "close"},
        ) from None
