"""The heartbeat under a silent Redis: a renewal that cannot be answered before the
leases run out does not hold the heartbeat (nor the model calls) past them."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

from shared.redis import async_client
from shared.settings import Settings
from shared.store import Heartbeat, Lease, SessionStore
from tests.support.proxy import FaultProxy


async def test_a_renewal_redis_does_not_answer_gives_the_lease_up_when_it_runs_out(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(lock_ttl_s=1.0)
    url = urlsplit(settings.redis_url)
    with FaultProxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        proxied = settings.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{proxy.port}{url.path}"}
        )
        client = async_client(proxied.redis_url)
        try:
            store = SessionStore(client, proxied)
            keys = store.keys("default", "silent")
            await store.accept(keys, input_doc={"content": "hi"})
            lease = Lease(store, keys)
            assert await store.begin(keys, lease.token) is not None
            heartbeat = Heartbeat(store)
            async with heartbeat.keep(lease):
                await heartbeat.beat()  # answered: renewed
                assert not lease.lost.is_set()
                proxy.blackhole()  # Redis goes silent; no reset ever comes
                started = time.monotonic()
                await heartbeat.beat()
                waited = time.monotonic() - started
            assert lease.lost.is_set()
            assert waited < proxied.lock_ttl_s + 0.5  # not the 10 s socket timeout
        finally:
            proxy.restore()
            await client.aclose()
