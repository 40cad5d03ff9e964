"""A loopback OpenAI-compatible chat server that streams the way the real API does:
HTTP/1.1 keep-alive, chunked transfer encoding, one ``data: {chunk}`` SSE event per
token, ``data: [DONE]`` at the end. Plain asyncio, so one process holds thousands of
concurrent streams at little CPU.

A reply is ``tokens`` words, sent ``interval_s`` apart, after ``first_token_s``:
``"<word0> <word1> ..."`` where word i is ``w<i>`` — unless the prompt's last user
message asks otherwise with ``tokens=N``, ``interval=S`` or ``first=S``. ``stamp`` in
it makes every word carry its send time (``w<i>@<unix ms>``) for latency probes.
Scripted behaviours (in order, one per request, then normal replies): ``("status",
code, retry_after)``, ``("drop_after", k)`` (close the connection after k tokens),
``("stall_after", k)`` (send k tokens, then nothing until the client gives up).
A message can script its own faults, whatever else is in flight: ``fault=<f>`` (``429``,
``500``, ``drop`` after 3 tokens, ``stall`` after 3 tokens) is applied to the first
``faults=N`` requests (default 1) whose latest user message is that message.
``on_request`` (if set) is called with each request's messages and the client's address,
on the server's thread, before it is answered.

    python -m tests.support.streaming_server --port 0 --tokens 200 --interval 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

Behaviour = tuple[Any, ...]
_DIRECTIVE = re.compile(r"\b(tokens|interval|first)=([0-9.]+)")
_FAULT = re.compile(r"\bfault=(429|500|drop|stall)\b(?:.*\bfaults=(\d+))?")
_FAULTS: dict[str, Behaviour] = {
    "429": ("status", 429, 1),
    "500": ("status", 500, None),
    "drop": ("drop_after", 3),
    "stall": ("stall_after", 3),
}


@dataclass
class StreamStats:
    """What the server saw; read it from any thread."""

    prompts: list[list[dict[str, Any]]] = field(default_factory=list)
    open_streams: int = 0
    max_open_streams: int = 0
    completed: int = 0
    abandoned: int = 0  # the client closed the connection before [DONE]
    tokens_sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


def _head(status: int, reason: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait ``seconds`` (the time to first token); True as soon as the client closes the
    connection meanwhile (a client sends nothing else while its answer streams)."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(1) == b""
    except TimeoutError:
        return False


def reply_words(tokens: int) -> list[str]:
    """The words a reply consists of (each but the last followed by a space)."""
    return [f"w{i}" for i in range(tokens)]


class StreamingModelServer:
    """Serve on ``127.0.0.1`` from a thread of its own: ``with StreamingModelServer() as s``."""

    def __init__(
        self,
        *,
        tokens: int = 20,
        interval_s: float = 0.0,
        first_token_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.tokens = tokens
        self.interval_s = interval_s
        self.first_token_s = first_token_s
        self.stats = StreamStats()
        self.script: list[Behaviour] = []
        self.on_request: Callable[[list[dict[str, Any]], Any], None] | None = None
        self._faulted: Counter[str] = Counter()
        self._port = port
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- running -------------------------------------------------------------------------

    async def start(self) -> asyncio.base_events.Server:
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", self._port, backlog=4096, limit=1 << 20
        )
        return self._server

    async def serve(self) -> None:
        server = await self.start()
        self._ready.set()
        async with server:
            await server.serve_forever()

    def __enter__(self) -> StreamingModelServer:
        def run() -> None:
            try:
                import uvloop

                loop = uvloop.new_event_loop()
            except ImportError:  # pragma: no cover
                loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve())
            except asyncio.CancelledError:
                pass
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="streaming-model-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None:

            def shut() -> None:
                server.close()
                for task in asyncio.all_tasks(loop):
                    task.cancel()

            loop.call_soon_threadsafe(shut)
        if self._thread is not None:
            self._thread.join(10)

    # -- one connection ------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                if request.get("_stats"):
                    body = orjson.dumps(self.snapshot())
                    head = {"content-type": "application/json", "content-length": str(len(body))}
                    writer.write(_head(200, "OK", head) + body)
                    continue
                keep = await self._answer(request, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> dict[str, Any] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        if head.startswith(b"GET /stats"):
            return {"_stats": True}
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await reader.readexactly(length) if length else b"{}"
        parsed: dict[str, Any] = orjson.loads(body)
        return parsed

    def snapshot(self) -> dict[str, int]:
        """The counters, as ``GET /stats`` answers them (for a server in another process)."""
        stats = self.stats
        return {
            "open_streams": stats.open_streams,
            "max_open_streams": stats.max_open_streams,
            "completed": stats.completed,
            "abandoned": stats.abandoned,
            "tokens_sent": stats.tokens_sent,
            "requests": len(stats.prompts),
        }

    def _next_behaviour(self) -> Behaviour:
        with self._guard:
            return self.script.pop(0) if self.script else ("ok",)

    async def _answer(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        stats = self.stats
        messages = request.get("messages", [])
        last = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        if self.on_request is not None:
            self.on_request(messages, writer.get_extra_info("peername"))
        behaviour = self._next_behaviour()
        if (fault := _FAULT.search(last)) is not None:
            with self._guard:
                self._faulted[last] += 1
                if self._faulted[last] <= int(fault.group(2) or 1):
                    behaviour = _FAULTS[fault.group(1)]
        if behaviour[0] == "status":
            body = orjson.dumps({"error": {"message": "scripted failure", "type": "test"}})
            headers = {"content-type": "application/json", "content-length": str(len(body))}
            if len(behaviour) > 2 and behaviour[2] is not None:
                headers["retry-after"] = str(behaviour[2])
            writer.write(_head(int(behaviour[1]), "Scripted", headers) + body)
            await writer.drain()
            stats.statuses[int(behaviour[1])] += 1
            return True
        tokens, interval, first = self.tokens, self.interval_s, self.first_token_s
        for name, value in _DIRECTIVE.findall(last):
            if name == "tokens":
                tokens = int(float(value))
            elif name == "interval":
                interval = float(value)
            else:
                first = float(value)
        stamp = "stamp" in last
        with self._guard:
            stats.prompts.append(messages)
        words = reply_words(tokens)
        writer.write(
            _head(
                200,
                "OK",
                {
                    "content-type": "text/event-stream",
                    "cache-control": "no-cache",
                    "transfer-encoding": "chunked",
                },
            )
        )
        stats.open_streams += 1
        stats.max_open_streams = max(stats.max_open_streams, stats.open_streams)
        model = str(request.get("model", "m"))
        prefix = b'{"id":"chatcmpl-loopback","object":"chat.completion.chunk","created":0,"model":'
        prefix += orjson.dumps(model) + b',"choices":[{"index":0,"delta":{"content":'
        suffix = b'},"finish_reason":null}]}'
        try:
            if first and await _closed_within(reader, first):
                stats.abandoned += 1  # the client gave up before the first token
                return False
            for i, word in enumerate(words):
                if behaviour[0] == "drop_after" and i == int(behaviour[1]):
                    writer.transport.abort()
                    stats.abandoned += 1
                    return False
                if behaviour[0] == "stall_after" and i == int(behaviour[1]):
                    await writer.drain()
                    await asyncio.sleep(3600)
                text = word if i == len(words) - 1 else word + " "
                if stamp:
                    text = f"{word}@{time.time_ns() // 1_000_000}" + (
                        "" if i == len(words) - 1 else " "
                    )
                writer.write(_chunk(b"data: " + prefix + orjson.dumps(text) + suffix + b"\n\n"))
                stats.tokens_sent += 1
                if interval:
                    await writer.drain()
                    await asyncio.sleep(interval)
            done = b'{"id":"chatcmpl-loopback","object":"chat.completion.chunk","created":0,'
            done += b'"model":' + orjson.dumps(model)
            done += b',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
            writer.write(_chunk(b"data: " + done + b"\n\n") + _chunk(b"data: [DONE]\n\n"))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            stats.completed += 1
            return True
        except (ConnectionError, asyncio.CancelledError):
            stats.abandoned += 1
            raise
        except RuntimeError:  # uvloop: the client closed the transport between two writes
            stats.abandoned += 1
            return False
        finally:
            stats.open_streams -= 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--first", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = StreamingModelServer(
        tokens=args.tokens, interval_s=args.interval, first_token_s=args.first, port=args.port
    )

    async def run() -> None:
        listening = await server.start()
        print(f"listening {server.port}", flush=True)
        async with listening:
            await listening.serve_forever()

    try:
        import uvloop

        uvloop.run(run())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
