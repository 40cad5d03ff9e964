"""A loopback webhook receiver whose answers a test scripts: it records every request and
answers each with the next scripted behaviour (then ``200``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loop_thread import LoopThread

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
        self._thread = LoopThread(self.receiver.start, self.receiver.stop, "webhook-receiver")

    @property
    def url(self) -> str:
        return self.receiver.url

    def __enter__(self) -> ReceiverThread:
        self._thread.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.__exit__(*exc)
