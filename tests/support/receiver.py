"""A loopback webhook receiver whose answers a test scripts: it records every request and
answers each with the next scripted behaviour (then ``200``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Behaviour = tuple[Any, ...]  # ("status", code[, headers]) | ("sleep", s) | ("redirect", to)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    script: list[Behaviour] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/elsewhere", self._elsewhere)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        self.received.append(
            Received(dict(request.headers), await request.read(), time.monotonic())
        )
        behaviour = self.script.pop(0) if self.script else ("status", 200)
        if behaviour[0] == "sleep":
            await asyncio.sleep(behaviour[1])
            return web.Response(status=200)
        if behaviour[0] == "redirect":
            raise web.HTTPFound(location=f"http://127.0.0.1:{self.port}/elsewhere")
        headers = behaviour[2] if len(behaviour) > 2 else {}
        return web.Response(status=int(behaviour[1]), headers=headers, text="ok")

    async def _elsewhere(self, request: web.Request) -> web.StreamResponse:
        self.received.append(
            Received({"redirected": "yes"}, await request.read(), time.monotonic())
        )
        return web.Response(status=200)


class ReceiverThread:
    """Runs a `Receiver` on its own event loop in a background thread, for tests that
    are not coroutines: ``with ReceiverThread() as hook: ... hook.receiver.received``.
    ``script`` may be replaced from the test's thread (a list swap is atomic)."""

    def __init__(self, receiver: Receiver | None = None) -> None:
        self.receiver = receiver if receiver is not None else Receiver()
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.receiver.url

    def __enter__(self) -> ReceiverThread:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = self._loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.receiver.start())
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.receiver.stop())
                loop.close()

        self._thread = threading.Thread(target=run, name="webhook-receiver", daemon=True)
        self._thread.start()
        ready.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
