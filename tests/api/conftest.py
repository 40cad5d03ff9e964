from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.settings import Settings


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The real app (real Redis, real lifespan); no worker runs, so turns stay queued."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client
