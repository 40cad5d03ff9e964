"""The Celery application and the per-process dependencies of the turn pipeline.

``celery -A worker.app worker`` runs the threads pool by default: model calls are
slow I/O, so one process keeps ``CHATLANE_WORKER_CONCURRENCY`` turns in flight.
Reliability settings are belt and braces; correctness never relies on them (the turn
lives in Redis and the Celery message is only a wake-up call).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, signals

from shared.lock import LeaseKeeper
from shared.nudge import DRAIN_TASK, Nudger
from shared.redis import sync_client
from shared.scripts import Scripts
from shared.settings import Settings
from worker.config import QUIET_LOGGERS, celery_config
from worker.model import build_model
from worker.sweeper import Sweeper
from worker.turn import TurnDeps


def create_celery(settings: Settings) -> Celery:
    app = Celery("chatlane", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.chatlane_settings = settings
    return app


class _ProcessDeps:
    """Lazily builds one ``TurnDeps`` per process (after any fork), thread-safely."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._deps: TurnDeps | None = None
        self._pid = 0

    def get(self, settings: Settings) -> TurnDeps:
        deps = self._deps
        if deps is not None and self._pid == os.getpid():
            return deps
        with self._guard:
            if self._deps is None or self._pid != os.getpid():
                client = sync_client(
                    settings.redis_url, max_connections=settings.worker_concurrency + 16
                )
                scripts = Scripts.register(client)
                self._deps = TurnDeps(
                    settings=settings,
                    client=client,
                    scripts=scripts,
                    model=build_model(settings),
                    leases=LeaseKeeper(client, scripts, settings.lock_ttl_ms),
                )
                self._pid = os.getpid()
            return self._deps


process_deps = _ProcessDeps()
app = create_celery(Settings())


def settings_of(celery_app: Any) -> Settings:
    settings: Settings = celery_app.conf.chatlane_settings
    return settings


@signals.after_setup_logger.connect
def _quiet_per_task_logs(**_: Any) -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@signals.worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    celery_app = sender.app if sender is not None else app
    settings = settings_of(celery_app)
    deps = process_deps.get(settings)
    nudger = Nudger(celery_app, settings.queue)
    sweeper = Sweeper(deps.client, deps.scripts, settings, nudger.nudge)
    sweeper.start()
    celery_app.conf.chatlane_sweeper = sweeper


import worker.tasks  # noqa: E402,F401  (registers the drain task on ``app``)

__all__ = ["DRAIN_TASK", "app", "create_celery", "process_deps", "settings_of"]
