"""The test cluster itself: an API port taken before the API binds it is chosen again."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx

from shared.settings import Settings
from tests.support.cluster import Cluster


def test_an_api_port_taken_before_the_api_binds_it_is_chosen_again(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    cluster = Cluster(make_settings(), tmp_path, workers=1, concurrency=4)
    taken = cluster.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with cluster:
            assert cluster.port != taken
            assert httpx.get(f"{cluster.base_url}/healthz").status_code == 200
