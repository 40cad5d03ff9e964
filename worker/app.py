"""The Celery application: ``create_celery(settings)`` registers the wake-up task;
``celery -A worker.app worker`` runs the module-level ``app``.

The threads pool carries wake-ups to the process's asyncio engine (``worker.engine``),
which runs the turns. Reliability settings are belt and braces; correctness never
relies on them (the turn lives in Redis and the Celery message is only a wake-up).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, signals

from shared.errors import ChatlaneError
from shared.settings import Settings
from shared.wakeup import WAKE_UP_TASK
from worker.config import QUIET_LOGGERS, celery_config
from worker.engine import Engine


def create_celery(settings: Settings) -> Celery:
    """A Celery app with the ``chatlane.wake_up`` task, bound to its own engine."""
    app = Celery("chatlane", set_as_current=False)
    app.conf.update(celery_config(settings))  # the broker too
    engine = Engine(settings)
    app.conf.chatlane_engine = engine

    @app.task(name=WAKE_UP_TASK, ignore_result=True, bind=True)
    def wake_up(task: Any, tenant: str, session: str) -> None:
        """Hand the session to this process's engine, which drains it unless another
        worker is doing so. Returns once handed over (blocks while the engine is full).

        Carries only ids: a lost or duplicated message is harmless (the sweeper sends
        another; a second drain finds the session busy or empty).
        """
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        engine.metrics.wake_ups.labels(str(redelivered).lower()).inc()
        engine.submit(tenant, session)

    return app


def engine_of(celery_app: Any) -> Engine | None:
    engine: Engine | None = celery_app.conf.get("chatlane_engine")
    return engine


@signals.after_setup_logger.connect
def _quiet_per_task_logs(**_: Any) -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@signals.worker_init.connect
def _start_engine(sender: Any = None, **_: Any) -> None:
    """Refuse to start, with one line naming the setting to fix, rather than take work
    this worker cannot do."""
    engine = engine_of(sender.app) if sender is not None else None
    if engine is None:
        return
    try:
        engine.start()
    except ChatlaneError as refused:
        print(f"chatlane worker: {refused}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@signals.worker_shutdown.connect
def _stop_engine(sender: Any = None, **_: Any) -> None:
    engine = engine_of(sender.app) if sender is not None else None
    if engine is not None:
        engine.stop()


app = create_celery(Settings())
