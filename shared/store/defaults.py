"""Tenants' defaults for new turns (the double-texting strategy and debounce).

A turn's strategy is the request's, else its session's (kept in the session's meta and
read by ``accept.lua`` itself), else its tenant's (here), else the deployment's
(``CHATLANE_DOUBLE_TEXTING``). A tenant's defaults are read once per ``CACHE_S`` per
process, so a change reaches every API replica within that time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shared.keys import GlobalKeys
from shared.recent import Recent
from shared.settings import Strategy

CACHE_S = 2.0


@dataclass(frozen=True, slots=True)
class TurnDefaults:
    """Double-texting defaults (a tenant's or a session's); None: not chosen here."""

    strategy: Strategy | None = None
    debounce_s: float | None = None


class TenantDefaults:
    """Read and set tenants' ``TurnDefaults``; asyncio, one per process."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._key = GlobalKeys(prefix).tenant_defaults
        self._recent: Recent[TurnDefaults] = Recent(CACHE_S)

    async def get(self, tenant: str, *, fresh: bool = False) -> TurnDefaults:
        cached = None if fresh else self._recent.get(tenant)
        if cached is not None:
            return cached
        raw = await self._client.hget(self._key, tenant)
        doc = orjson.loads(raw) if raw else {}
        defaults = TurnDefaults(doc.get("strategy"), doc.get("debounce_s"))
        self._recent.put(tenant, defaults)
        return defaults

    async def set(self, tenant: str, defaults: TurnDefaults) -> None:
        doc = {"strategy": defaults.strategy, "debounce_s": defaults.debounce_s}
        if defaults.strategy is None and defaults.debounce_s is None:
            await self._client.hdel(self._key, tenant)
        else:
            await self._client.hset(self._key, tenant, orjson.dumps(doc))
        self._recent.drop(tenant)
