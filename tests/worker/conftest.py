from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from langchain_core.language_models import BaseChatModel

from shared.lock import LeaseKeeper
from shared.scripts import Scripts
from shared.settings import Settings
from worker.model import build_model
from worker.turn import TurnDeps

DepsFactory = Callable[..., TurnDeps]


@pytest.fixture
def make_deps(client: redis.Redis, scripts: Scripts) -> Iterator[DepsFactory]:
    """The pipeline's dependencies on the real Redis, with a model of the test's choosing."""
    keepers: list[LeaseKeeper] = []

    def build(settings: Settings, model: BaseChatModel | None = None) -> TurnDeps:
        keeper = LeaseKeeper(client, scripts, settings.lock_ttl_ms)
        keepers.append(keeper)
        return TurnDeps(
            settings=settings,
            client=client,
            scripts=scripts,
            model=model if model is not None else build_model(settings),
            leases=keeper,
        )

    yield build
    for keeper in keepers:
        keeper.stop()
