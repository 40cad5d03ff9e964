"""Token budgets: reserved from an estimate, settled by what the turn cost."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shared.errors import RateLimited
from shared.quotas import Quotas
from shared.redis import async_client
from shared.settings import Settings


async def test_a_settlement_gives_back_what_a_turn_did_not_spend_and_charges_what_it_did(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(rate_tokens_per_minute=1000)
    client = async_client(settings.redis_url)
    try:
        quotas = Quotas(client, settings)
        await quotas.reserve_tokens("acme", 900)
        with pytest.raises(RateLimited) as refused:
            await quotas.reserve_tokens("acme", 200)
        assert 1 <= refused.value.retry_after_s <= 60
        await quotas.reserve_tokens("globex", 900)  # another tenant's budget is its own
        await quotas.settle_tokens("acme", 900, 100)  # it cost 100: 800 come back
        await quotas.reserve_tokens("acme", 200)
        await quotas.settle_tokens("acme", 200, 900)  # it cost 700 more than reserved
        with pytest.raises(RateLimited):
            await quotas.reserve_tokens("acme", 50)
    finally:
        await client.aclose()


async def test_a_budget_of_zero_is_no_limit(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(rate_tokens_per_minute=0, rate_requests_per_minute=0)
    client = async_client(settings.redis_url)
    try:
        quotas = Quotas(client, settings)
        for _ in range(3):
            await quotas.reserve_tokens("acme", 10**9)
            await quotas.spend_request("acme")
    finally:
        await client.aclose()
