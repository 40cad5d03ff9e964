"""Celery tasks: thin translations of task arguments into calls of the turn pipeline."""

from __future__ import annotations

from typing import Any

from worker.app import DRAIN_TASK, app, process_deps, settings_of
from worker.turn import drain_session


@app.task(name=DRAIN_TASK, bind=True, ignore_result=True)
def drain(self: Any, tenant: str, session: str) -> int:
    """Wake-up call for one session: drain its mailbox if no other worker is doing so.

    Carries only ids; a lost or duplicated message is harmless (the sweeper re-nudges,
    and a second drain finds the session busy or empty). Returns turns committed.
    """
    deps = process_deps.get(settings_of(self.app))
    return drain_session(deps, tenant, session).committed
