"""The API and the worker settle their heaps once started: no full collection walks the
objects that live as long as the process, and full collections are rare."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from shared.heap import FULL_AFTER
from shared.settings import Settings

API = """
import asyncio, gc, sys
from api.main import create_app
from shared.settings import Settings

app = create_app(Settings.model_validate_json(sys.argv[1]))

async def main() -> None:
    before = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        print(before, gc.get_freeze_count(), gc.get_threshold()[2])

asyncio.run(main())
"""

WORKER = """
import gc, sys
from shared.settings import Settings
from worker.engine import Engine

engine = Engine(Settings.model_validate_json(sys.argv[1]))
before = gc.get_freeze_count()
engine.start()
print(before, gc.get_freeze_count(), gc.get_threshold()[2])
engine.stop(0)
"""


def _run(code: str, settings: Settings) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", code, settings.model_dump_json()],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [int(v) for v in done.stdout.split()]


def test_the_api_freezes_what_it_built_at_start_and_makes_full_collections_rare(
    make_settings: Callable[..., Settings],
) -> None:
    before, after, full_after = _run(API, make_settings(settle_heap=True))
    assert before == 0
    assert after > 10_000  # modules, the app, its schemas
    assert full_after == FULL_AFTER


def test_a_process_embedding_chatlane_can_keep_its_own_collector_settings(
    make_settings: Callable[..., Settings],
) -> None:
    _, after, full_after = _run(API, make_settings(settle_heap=False))
    assert after == 0 and full_after == 10


def test_a_worker_does_the_same_once_its_engine_runs(
    make_settings: Callable[..., Settings],
) -> None:
    before, after, full_after = _run(WORKER, make_settings(settle_heap=True))
    assert before == 0
    assert after > 10_000
    assert full_after == FULL_AFTER
