"""A loopback server for synchronous tests: an event loop in a thread of its own that
runs a server's ``start`` before the test goes on and its ``stop`` when the test is done."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """``with LoopThread(start, stop, "name") as thread:`` — ``start()`` has run (its
    error, if any, is raised here); ``thread.call(coro)`` runs more on the loop."""

    def __init__(
        self,
        start: Callable[[], Awaitable[object]],
        stop: Callable[[], Awaitable[object]],
        name: str,
    ) -> None:
        self._start, self._stop, self._name = start, stop, name
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def __enter__(self) -> LoopThread:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = self._loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._stop())
                loop.close()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        ready.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None
