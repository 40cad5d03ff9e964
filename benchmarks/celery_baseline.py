"""Raw Celery: the baseline that chatlane's numbers are compared with, in the same run.

The app is configured like chatlane's worker (``worker.config.celery_config``): same broker
(read from the same ``CHATLANE_*`` settings), threads pool, ``acks_late``, prefetch
multiplier 1, JSON, no task events. Its pool has ``CHATLANE_WORKER_CONCURRENCY`` threads:
chatlane's few pool threads only hand sessions to its engine, which then holds that many
at once, so that is the raw Celery worker doing the same amount of work at once. Only the
tasks differ: they do nothing (or sleep), so the difference to chatlane is chatlane's own
work per turn. ``worker.app`` is
not imported: its ``worker_init`` handler would start chatlane's engine (its event loop,
lease heartbeat and sweeper) in this worker.

Run by ``BaselineCluster`` as ``celery -A benchmarks.celery_baseline worker``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery, signals

from shared.settings import Settings
from shared.wakeup import wake_up_message
from worker.config import QUIET_LOGGERS, celery_config

NOOP = "bench.noop"
PING = "bench.ping"
SLEEP = "bench.sleep"


def create_baseline(settings: Settings) -> Celery:
    """The baseline app; its result backend (used only by ``bench.ping``) is the data Redis."""
    app = Celery(
        "chatlane-baseline",
        broker=settings.effective_broker_url,
        backend=settings.redis_url,
        set_as_current=False,
    )
    app.conf.update(
        celery_config(settings, concurrency=settings.worker_concurrency), result_serializer="json"
    )

    @app.task(name=NOOP, ignore_result=True, shared=False)
    def noop(*args: Any) -> None:
        """Does nothing; the message is acknowledged when it returns (``acks_late``)."""

    @app.task(name=PING, ignore_result=False, shared=False)
    def ping() -> str:
        """Stores ``"pong"`` in the result backend, for ``.delay().get()`` round trips."""
        return "pong"

    @app.task(name=SLEEP, ignore_result=True, shared=False)
    def sleep(seconds: float, *args: Any) -> None:
        """Holds a pool thread for ``seconds``, like a slow model call."""
        time.sleep(seconds)

    return app


@signals.after_setup_logger.connect
def _quiet_per_task_logs(**_: Any) -> None:
    """The same as chatlane's worker (``worker/app.py``): no INFO line per task received or
    succeeded, so neither side pays for logging the other does not."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def tasks_run(settings: Settings, task: str) -> int:
    """How many ``task`` runs the live baseline workers started (Celery's own counters, via
    ``inspect().stats()``): proof that the baseline really ran what was sent."""
    app = create_baseline(settings)
    try:
        stats = app.control.inspect(timeout=5).stats() or {}
    finally:
        app.close()
    return sum(int(s.get("total", {}).get(task, 0)) for s in stats.values())


def verify_ran(settings: Settings, task: str, sent: int) -> int:
    """Raise unless the live baseline workers ran exactly ``sent`` ``task``s; return it."""
    ran = tasks_run(settings, task)
    if ran != sent:
        raise RuntimeError(f"the Celery baseline ran {ran} {task} tasks, {sent} were sent")
    return ran


def task_message(queue: str, task: str, args: Sequence[Any]) -> str:
    """A Redis-broker envelope for ``task(*args)``, shaped exactly like chatlane's wake-ups.

    Built from ``shared.wakeup.wake_up_message`` (what the API ``LPUSH``es) with the task
    name and arguments swapped, so the baseline worker decodes the same kind of message.
    """
    envelope = json.loads(wake_up_message(queue, "-", "-"))
    body = json.loads(base64.b64decode(envelope["body"]))
    body[0] = list(args)
    envelope["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    envelope["headers"]["task"] = task
    envelope["headers"]["argsrepr"] = repr(list(args))
    envelope["headers"]["ignore_result"] = task != PING
    return json.dumps(envelope)


app = create_baseline(Settings())
