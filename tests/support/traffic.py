"""Steady chat traffic for fault tests: each simulated user sends messages to one session
of one tenant, one after another, from a thread of its own, as a careful client would.

A request that fails (a ``503`` while Redis is down, a reset connection) is sent again
with the same ``Idempotency-Key`` until it is accepted, so every message a user sent ends
as exactly one known turn; what the API answered meanwhile is counted by status, so a
test can require ``503`` problems and never a ``500``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.checker import message_for


@dataclass(frozen=True)
class Told:
    """What one ``202`` told its client."""

    tenant: str
    session: str
    content: str
    turn_id: str
    seq: int
    strategy: str
    at: float  # time.monotonic() when the answer came


@dataclass
class User:
    tenant: str
    session: str
    api_key: str | None = None
    strategy: str | None = None
    body: dict[str, Any] = field(default_factory=dict)  # more fields for every message


@dataclass
class Traffic:
    """Run ``users`` against ``base_urls`` (round robin per request) until ``stop()``."""

    base_urls: list[str]
    users: list[User]
    pause_s: float = 0.05
    timeout_s: float = 10.0
    told: list[Told] = field(default_factory=list)
    answers: Counter[tuple[int, str]] = field(default_factory=Counter)  # (status, type)
    failures: Counter[str] = field(default_factory=Counter)  # no answer: the exception
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Traffic:
        for i, user in enumerate(self.users):
            thread = threading.Thread(target=self._run, args=(i, user), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout_s: float = 60) -> None:
        """Stop sending new messages; wait for the ones being sent to be accepted."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, index: int, user: User) -> None:
        headers = {"Authorization": f"Bearer {user.api_key}"} if user.api_key else {}
        clients = [httpx.Client(base_url=u, timeout=self.timeout_s) for u in self.base_urls]
        try:
            n = 0
            while not self._stop.is_set():
                content = message_for(f"{user.tenant}.{user.session}", n)
                self._send(clients, index + n, user, headers, content)
                n += 1
                time.sleep(self.pause_s)
        finally:
            for client in clients:
                client.close()

    def _send(
        self,
        clients: list[httpx.Client],
        turn: int,
        user: User,
        headers: dict[str, str],
        content: str,
    ) -> None:
        body: dict[str, Any] = {**user.body, "content": content}
        if user.strategy:
            body["strategy"] = user.strategy
        key = secrets.token_hex(12)
        for attempt in range(10_000):
            client = clients[(turn + attempt) % len(clients)]
            try:
                response = client.post(
                    f"/v1/sessions/{user.session}/turns",
                    json=body,
                    headers={**headers, "Idempotency-Key": key},
                )
            except httpx.HTTPError as exc:
                with self._guard:
                    self.failures[type(exc).__name__] += 1
                time.sleep(0.2)
                continue
            kind = response.headers.get("content-type", "").split(";")[0]
            with self._guard:
                self.answers[response.status_code, kind] += 1
            if response.status_code in (200, 202):
                turn_record = response.json()
                told = Told(
                    user.tenant,
                    user.session,
                    content,
                    turn_record["id"],
                    turn_record["seq"],
                    turn_record.get("strategy") or "enqueue",
                    time.monotonic(),
                )
                with self._guard:
                    self.told.append(told)
                return
            if response.status_code == 409 and user.strategy == "reject":
                return  # refused, as that strategy promises: no turn
            time.sleep(0.2)

    def unexpected(self) -> dict[tuple[int, str], int]:
        """Answers other than a success or a ``503`` problem (a ``500`` above all)."""
        fine = {(200, "application/json"), (202, "application/json")}
        return {
            k: n
            for k, n in self.answers.items()
            if k not in fine and k != (503, "application/problem+json")
        }
