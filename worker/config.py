"""The Celery configuration of a chatlane worker, free of side effects (no app, no signals),
so that anything that must run Celery the same way (the benchmarks' baseline) can share it."""

from __future__ import annotations

from typing import Any

from shared.redis import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, celery_ssl, celery_url
from shared.settings import Settings

# INFO lines logged per task ("received", "succeeded") and per model request (httpx): at
# hundreds of turns per second they cost CPU and say nothing a turn record does not.
QUIET_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "httpx", "httpx2")


# Pool threads only hand sessions to the engine, which holds CHATLANE_WORKER_CONCURRENCY of
# them at once; a few threads keep up, and while the engine is full they hold no more than
# these few wake-ups back from other workers.
HANDOFF_THREADS = 4


# kombu's Redis connections have no socket timeout of their own: a connection a network
# fault left dead (no reset ever arrives) blocked the consumer for good, and its health
# check runs every 25 s. Bounded like every other Redis command of chatlane's.
_REDIS_BROKER_TIMEOUTS = {
    "socket_timeout": COMMAND_TIMEOUT_S,
    "socket_connect_timeout": CONNECT_TIMEOUT_S,
    "health_check_interval": 2,
}


def celery_config(settings: Settings, *, concurrency: int = HANDOFF_THREADS) -> dict[str, Any]:
    """Reliability settings are belt and braces; correctness never relies on them.

    The broker comes with its TLS options read from a ``rediss://`` URL (``celery_ssl``),
    and so does a result backend on the data Redis, should an app sharing this have one.
    """
    broker = settings.effective_broker_url
    tls: dict[str, Any] = {}
    if (broker_ssl := celery_ssl(broker)) is not None:
        tls["broker_use_ssl"] = broker_ssl
    if (backend_ssl := celery_ssl(settings.redis_url)) is not None:
        tls["redis_backend_use_ssl"] = backend_ssl
    return {
        "broker_url": celery_url(broker),
        **tls,
        "task_default_queue": settings.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "threads",
        "worker_concurrency": concurrency,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # With acks_late every in-flight task acks over the pool: size it to the concurrency.
        "broker_pool_limit": concurrency + 8,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            **(_REDIS_BROKER_TIMEOUTS if broker.startswith("redis") else {}),
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }
