"""Wake-up calls: the Celery message that tells some worker to drain a session.

The message carries only tenant and session ids and is sent by task name, so the API
never imports the worker. Losing or duplicating one is harmless by design.
"""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings

DRAIN_TASK = "chatlane.drain"


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


class Nudger:
    def __init__(self, app: Celery, queue: str) -> None:
        self._app = app
        self._queue = queue

    def nudge(self, tenant: str, session: str) -> None:
        """Publish one drain request; blocking (kombu is synchronous)."""
        self._app.send_task(DRAIN_TASK, args=[tenant, session], queue=self._queue)

    def check(self) -> None:
        """Raise unless the broker accepts a connection (readiness)."""
        with self._app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
