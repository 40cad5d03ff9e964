"""The chaos soak, bounded: streaming load from several tenants with every strategy,
webhooks and a Telegram bot, while workers are SIGKILLed every few seconds, Redis is
SIGKILLed and restarted from its append-only file once, and the webhook receiver flaps.
The checker must find nothing. (``python -m benchmarks.soak`` runs it for minutes.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import Config, run


@pytest.mark.timeout(300)
def test_a_short_chaos_soak_leaves_nothing_lost_doubled_reordered_or_leaked(
    tmp_path: Path,
) -> None:
    config = Config(duration_s=24, tenants=2, users_per_tenant=8, chats_per_tenant=2,
                    workers=3, kill_every_s=5)  # fmt: skip
    result = run(config, tmp_path)
    assert result.violations == {}, result.problems
    assert result.worker_kills >= 3 and result.redis_restarts == 1
    assert result.receiver_flaps >= 3
    assert result.turns > 100 and result.channel_messages > 10
    assert result.webhooks_received > 0 and result.replies_sent > 0
