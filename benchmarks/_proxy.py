"""A counting TCP proxy in front of a Redis server, one listening port per client role.

Redis's own counters cannot tell who sent what, and ``total_commands_processed`` also
counts the commands a Lua script runs (checked on redis-server 7.0: one ``EVALSHA`` of a
script doing ``SET`` + ``HSET`` adds 3). The proxy parses the RESP requests a client
sends and counts, per role:

* ``commands`` — top-level commands, by name (``EVALSHA`` is split by script name);
* ``round_trips`` — request bursts: client bytes that follow a server reply (or open the
  connection). A pipeline of N commands is one round trip; so is a blocking ``BRPOP``.

Runs an asyncio loop in a daemon thread of the benchmark process; ``stop()`` closes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cli.redis_server import free_port
from shared.store.scripts import NAMES, source

# What EVALSHA sends: the sha1 of the loader's full text of a script (prelude included).
_SCRIPT_BY_SHA = {hashlib.sha1(source(name).encode()).hexdigest(): name for name in NAMES}


@dataclass
class RoleCounts:
    round_trips: int = 0
    commands: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> RoleCounts:
        return RoleCounts(self.round_trips, Counter(self.commands))

    def __sub__(self, other: RoleCounts) -> RoleCounts:
        diff = Counter(self.commands)
        diff.subtract(other.commands)
        return RoleCounts(self.round_trips - other.round_trips, +diff)

    @property
    def total_commands(self) -> int:
        return sum(self.commands.values())


class _RespCounter:
    """Incremental parser of a client's RESP request stream (arrays of bulk strings)."""

    def __init__(self, counts: RoleCounts) -> None:
        self._counts = counts
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            parsed = self._one()
            if parsed is None:
                return
            name, used = parsed
            self._buf = self._buf[used:]
            self._counts.commands[name] += 1

    def _one(self) -> tuple[str, int] | None:
        buf = self._buf
        if not buf:
            return None
        if buf[:1] != b"*":  # inline command (never sent by redis-py / kombu)
            end = buf.find(b"\r\n")
            return None if end < 0 else (buf[:end].split(b" ", 1)[0].decode().upper(), end + 2)
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        count = int(buf[1:end])
        pos = end + 2
        args: list[bytes] = []
        for _ in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            size = int(buf[pos + 1 : end])
            start = end + 2
            if len(buf) < start + size + 2:
                return None
            if len(args) < 2:
                args.append(buf[start : start + size])
            pos = start + size + 2
        name = args[0].decode().upper()
        if name == "EVALSHA" and len(args) > 1:
            name = f"EVALSHA {_SCRIPT_BY_SHA.get(args[1].decode(), '?')}"
        return name, pos


class CountingProxy:
    """``roles`` listening ports on loopback, all forwarding to ``target_port``."""

    def __init__(self, target_port: int, roles: list[str]) -> None:
        self.target_port = target_port
        self.ports = {role: free_port() for role in roles}
        self.counts = {role: RoleCounts() for role in roles}
        self._guard = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-proxy", daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._open: set[asyncio.StreamWriter] = set()

    def url(self, role: str) -> str:
        return f"redis://127.0.0.1:{self.ports[role]}/0"

    def snapshot(self) -> dict[str, RoleCounts]:
        with self._guard:
            return {role: c.snapshot() for role, c in self.counts.items()}

    def start(self) -> CountingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the counting proxy did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        for role, port in self.ports.items():
            server = self._loop.run_until_complete(
                asyncio.start_server(self._handler(role), "127.0.0.1", port)
            )
            self._servers.append(server)
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            for server in self._servers:
                server.close()
            # Connections still open (a client that never closed its pool): close them so
            # their handlers end here, not as "Task was destroyed" noise at exit.
            for stream in list(self._open):
                stream.close()
            pending = asyncio.all_tasks(self._loop)
            if pending:
                self._loop.run_until_complete(asyncio.wait(pending, timeout=2))
            self._loop.close()

    def _handler(
        self, role: str
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        counts = self.counts[role]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._open.add(writer)
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                self._open.discard(writer)
                writer.close()
                return
            self._open.add(up_writer)
            parser = _RespCounter(counts)
            replied = [True]  # the next client bytes open a round trip

            async def client_to_server() -> None:
                while data := await reader.read(65536):
                    with self._guard:
                        if replied[0]:
                            counts.round_trips += 1
                            replied[0] = False
                        parser.feed(data)
                    up_writer.write(data)
                    await up_writer.drain()
                up_writer.close()

            async def server_to_client() -> None:
                while data := await up_reader.read(65536):
                    replied[0] = True
                    writer.write(data)
                    await writer.drain()
                writer.close()

            try:
                await asyncio.gather(client_to_server(), server_to_client())
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
                up_writer.close()
                self._open.difference_update((writer, up_writer))

        return handle
