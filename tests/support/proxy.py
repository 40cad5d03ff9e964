"""A loopback TCP proxy that can hold traffic back: a Redis (or anything) that is slow to
answer, without touching the server others may share."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class StallingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; ``hold()`` stops forwarding requests
    (clients' writes pile up in their socket buffers) until ``release()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._flowing: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, name="stalling-proxy", daemon=True)
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def hold(self) -> None:
        assert self._loop is not None and self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def release(self) -> None:
        if self._loop is not None and self._flowing is not None:
            self._loop.call_soon_threadsafe(self._flowing.set)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def start() -> None:
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = await asyncio.start_server(self._pipe_pair, "127.0.0.1", 0)
            self._ready.set()

        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(asyncio.sleep(0.05))  # let aborted transports close
        loop.close()

    async def _pipe_pair(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, holdable=True),
            self._pipe(up_reader, writer, holdable=False),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, holdable: bool
    ) -> None:
        assert self._flowing is not None
        while data := await reader.read(65536):
            if holdable:
                await self._flowing.wait()
            writer.write(data)
            await writer.drain()

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        loop = self._loop
        if loop is not None:

            def stop() -> None:
                if self._server is not None:
                    self._server.close()
                for w in self._writers:
                    w.transport.abort()
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.stop()

            loop.call_soon_threadsafe(stop)
        with contextlib.suppress(RuntimeError):
            self._thread.join(5)
