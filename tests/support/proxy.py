"""A loopback TCP proxy for fault tests: it injects network faults (latency, resets, a
blackhole that holds traffic back until restored, connections left dead) between a
process and a server, without touching the server others may share."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a TCP RST


def _abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s connection at once with a TCP RST (the peer reads ECONNRESET)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class _Link:
    """One client connection and its upstream connection."""

    __slots__ = ("dead", "sides", "stranded", "tasks")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.sides = (client, upstream)
        self.tasks: list[asyncio.Task[None]] = []
        self.dead = False
        self.stranded = False

    def reset(self) -> None:
        """Both connections end with a TCP RST; the pipes between them stop."""
        if self.dead:
            return
        self.dead = True
        for side in self.sides:
            _abort_with_reset(side)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` with network faults switched on and off
    from any thread (each call takes effect before it returns):

    - ``delay(low_s, high_s)``: every chunk, each way, waits a random time in that range
      before it is forwarded (``delay(0)``: none);
    - ``reset()``: every open connection ends at once with a TCP RST, on both sides;
    - ``blackhole()`` until ``restore()``: connections are accepted and bytes read, but
      nothing is forwarded and nothing answered, not even a close. ``restore()`` lets
      through what was held, in order, as TCP does after a partition heals; a peer that
      gave up meanwhile has closed its end, and its late bytes arrive as they would;
    - ``strand()``: every connection open now stays open but never carries another byte
      (a NAT or firewall on the way lost its state): only new connections flow again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._open: asyncio.Event | None = None
        self._delay = (0.0, 0.0)
        self._links: set[_Link] = set()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._ready = threading.Event()
        self.accepted = 0  # connections accepted so far
        self.resets = 0  # connections ended by reset()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return self._on_loop(lambda: len(self._links))

    def url(self, template: str) -> str:
        """``template`` (a ``scheme://host:port/...`` URL of the target) pointed at the proxy."""
        parts = urlsplit(template)
        netloc = parts.netloc.rpartition("@")
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}{host}"))

    def delay(self, low_s: float, high_s: float | None = None) -> None:
        self._delay = (low_s, low_s if high_s is None else high_s)

    def reset(self) -> int:
        """Reset every open connection; how many there were."""

        def reset_all() -> int:
            links = list(self._links)
            for link in links:
                link.reset()
            self.resets += len(links)
            return len(links)

        return self._on_loop(reset_all)

    def blackhole(self) -> None:
        self._on_loop(lambda: self._flowing().clear())

    def restore(self) -> None:
        self._on_loop(lambda: self._flowing().set())

    def strand(self) -> int:
        """Strand every open connection; how many there were."""

        def strand_all() -> int:
            for link in self._links:
                link.stranded = True
            return len(self._links)

        return self._on_loop(strand_all)

    def _flowing(self) -> asyncio.Event:
        assert self._open is not None
        return self._open

    def _on_loop(self, call: Callable[[], T]) -> T:
        assert self._loop is not None

        async def run() -> T:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def start() -> None:
            self._open = asyncio.Event()
            self._open.set()
            self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
            self._ready.set()

        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(asyncio.sleep(0.05))  # let aborted transports close
        loop.close()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            _abort_with_reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link)),
            asyncio.create_task(self._pipe(up_reader, writer, link)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the proxy is closing: end quietly (asyncio logs a cancelled handler)
        finally:
            self._links.discard(link)
            for side in link.sides:
                side.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(65536):
                await self._passage(link)
                low, high = self._delay
                if high > 0:
                    await asyncio.sleep(random.uniform(low, high))
                writer.write(data)
                await writer.drain()
            await self._passage(link)  # a close is news too: held back like the bytes
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):  # one side reset (or closed under a write)
            link.reset()

    async def _passage(self, link: _Link) -> None:
        """Return when ``link`` may carry bytes again (never, once stranded)."""
        await self._flowing().wait()
        if link.stranded:
            await asyncio.get_running_loop().create_future()  # until reset or exit

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is None:
            return

        def stop() -> None:
            self._flowing().set()
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.reset()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.stop()

        loop.call_soon_threadsafe(stop)
        with contextlib.suppress(RuntimeError):
            self._thread.join(5)
