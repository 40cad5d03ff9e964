"""Per-tenant budgets: requests and model tokens per minute, held in Redis.

The counting is the ``limits`` library's sliding window counter (two counters per
tenant and budget, one Lua call per check), so every API replica and worker spends from
the same budget. Model tokens are reserved when a turn is accepted, from an estimate
(the message's length plus ``reply_token_estimate``), and settled by the worker once the
model has answered: the difference, up or down, goes into the current window. A budget
of 0 means no limit.
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from shared.errors import RateLimited
from shared.keys import GlobalKeys
from shared.settings import Settings

CHARS_PER_TOKEN = 4
UNBOUNDED = 2**53  # a settlement is recorded whatever the window holds


def estimate_tokens(text: str) -> int:
    """A model-independent estimate of the tokens ``text`` costs (about 4 characters each)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


class Quotas:
    """The budgets of every tenant; built on a client the caller owns (no I/O here)."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.settings = settings
        self.storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=GlobalKeys(settings.key_prefix).rate_limits,
            connection_pool=client.connection_pool,
        )
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.requests = RateLimitItemPerMinute(max(settings.rate_requests_per_minute, 1))
        self.tokens = RateLimitItemPerMinute(max(settings.rate_tokens_per_minute, 1))

    def turn_estimate(self, content: str | int) -> int:
        """Tokens reserved for a turn with this message (or a message this many
        characters long) before its model call."""
        chars = content if isinstance(content, int) else len(content)
        return math.ceil(chars / CHARS_PER_TOKEN) + self.settings.reply_token_estimate

    async def spend_request(self, tenant: str) -> None:
        """Count one request; raises ``RateLimited`` (counting nothing) when over budget."""
        if self.settings.rate_requests_per_minute:
            await self._spend(self.requests, tenant, 1, "requests")

    async def reserve_tokens(self, tenant: str, estimate: int) -> None:
        """Reserve a turn's estimated tokens; raises ``RateLimited`` when over budget."""
        if self.settings.rate_tokens_per_minute and estimate > 0:
            await self._spend(self.tokens, tenant, estimate, "model tokens")

    async def settle_tokens(self, tenant: str, estimate: int, actual: int) -> None:
        """Correct a reservation by what the turn really cost (a refund when it cost less,
        or when it never ran: ``actual`` 0). Never refused."""
        delta = actual - estimate
        if self.settings.rate_tokens_per_minute and delta:
            await self.storage.acquire_sliding_window_entry(
                self.tokens.key_for(tenant), UNBOUNDED, self.tokens.get_expiry(), delta
            )

    async def _spend(self, item: RateLimitItemPerMinute, tenant: str, cost: int, what: str) -> None:
        if await self.limiter.hit(item, tenant, cost=cost):
            return
        stats = await self.limiter.get_window_stats(item, tenant)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(what, item.amount, min(retry_after, 60))
