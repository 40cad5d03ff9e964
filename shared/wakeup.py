"""Wake-ups: the Celery message that tells some worker to drain a session.

The message carries only tenant and session ids and is sent by task name, so the API
never imports the worker. Losing or duplicating one is harmless by design: the turn
lives in Redis, and the sweeper sends another wake-up to a session left waiting.

On a Redis broker the message is pushed directly (a Celery protocol-2 envelope) with
the caller's asyncio client: kombu's publisher is synchronous and builds a new Redis
client per publish, which was most of the API's CPU per accepted turn. Any other
broker (AMQP) goes through Celery's own ``send_task``, in a thread.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from celery import Celery

from shared.redis import async_client
from shared.settings import Settings

WAKE_UP_TASK = "chatlane.wake_up"
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


def producer_app(settings: Settings) -> Celery:
    """A Celery app that only publishes (no tasks, no result backend); no I/O until used."""
    app = Celery("chatlane-producer", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue,
        task_ignore_result=True,
        task_serializer="json",
        broker_pool_limit=64,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_send_sent_event=False,
    )
    return app


def is_redis_broker(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def wake_up_message(queue: str, tenant: str, session: str) -> str:
    """The kombu-on-Redis envelope of a Celery protocol-2 ``chatlane.wake_up`` message."""
    task_id = str(uuid.uuid4())
    body = json.dumps(
        [[tenant, session], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": WAKE_UP_TASK,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr([tenant, session]),
                "kwargsrepr": "{}",
                "origin": _ORIGIN,
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


class WakeUps:
    """Sends wake-ups from asyncio code (the API, the worker's sweeper)."""

    def __init__(self, settings: Settings, broker_client: Any | None) -> None:
        self._queue = settings.queue
        self._client = broker_client
        self._celery = None if broker_client is not None else producer_app(settings)

    async def send(self, tenant: str, session: str) -> None:
        if self._client is not None:
            await self._client.lpush(self._queue, wake_up_message(self._queue, tenant, session))
            return
        assert self._celery is not None
        await to_thread.run_sync(self._send, tenant, session)

    def _send(self, tenant: str, session: str) -> None:
        assert self._celery is not None
        self._celery.send_task(WAKE_UP_TASK, args=[tenant, session], queue=self._queue)

    async def check(self) -> None:
        """Raise unless the broker answers (readiness)."""
        if self._client is not None:
            await self._client.ping()
            return
        await to_thread.run_sync(self._check_celery)

    def _check_celery(self) -> None:
        assert self._celery is not None
        with self._celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    def close(self) -> None:
        if self._celery is not None:
            self._celery.close()


@asynccontextmanager
async def open_wake_ups(settings: Settings, data_client: Any) -> AsyncIterator[WakeUps]:
    """The deployment's ``WakeUps``: on a Redis broker that is the data Redis, its client
    is reused; another Redis broker gets a client of its own, closed on exit."""
    url = settings.effective_broker_url
    broker: Any | None = None
    if is_redis_broker(url):
        broker = data_client if url == settings.redis_url else async_client(url, name="wake-ups")
    wake_ups = WakeUps(settings, broker)
    try:
        yield wake_ups
    finally:
        wake_ups.close()
        if broker is not None and broker is not data_client:
            await broker.aclose()
