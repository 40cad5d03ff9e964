"""The floor for streaming: a bare aiohttp + orjson loop reading ``--streams`` chat
completion streams at once from a server, in a process of its own, on uvloop. Prints one
JSON line: tokens read, CPU seconds and wall seconds. Nothing of chatlane is imported.

    python -m benchmarks._floor --url http://127.0.0.1:PORT/v1/chat/completions --streams 1000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson
import uvloop

BODY = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"content-type": "application/json", "authorization": "Bearer floor"}


def _texts(buffer: bytes, out: list[str]) -> bytes:
    """Append the content of every complete event in ``buffer``; return the rest."""
    while (end := buffer.find(b"\n\n")) >= 0:
        event, buffer = buffer[:end], buffer[end + 2 :]
        if event.startswith(b"data: ") and event[6:] != b"[DONE]":
            text = orjson.loads(event[6:])["choices"][0]["delta"].get("content")
            if text:
                out.append(text)
    return buffer


async def _one(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url, data=BODY, headers=HEADERS) as response:
        buffer, out = b"", []
        async for data in response.content.iter_any():
            buffer = _texts(buffer + data, out)
        return len(out)


async def _all(url: str, streams: int) -> dict[str, float]:
    cpu, wall = time.process_time(), time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tokens = await asyncio.gather(*(_one(session, url) for _ in range(streams)))
    return {
        "tokens": float(sum(tokens)),
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.monotonic() - wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args(argv)
    sys.stdout.write(orjson.dumps(uvloop.run(_all(args.url, args.streams))).decode() + "\n")


if __name__ == "__main__":
    main()
