"""What fault tests share: waiting for every turn to end, the checker's verdict over what
clients were told, and reading a counter off a process's ``/metrics``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from shared.keys import SessionKeys
from shared.settings import Settings
from tests.support.ledger import Ledger, observe_end
from tests.support.ledger_check import check
from tests.support.receiver import Received
from tests.support.traffic import Told

TERMINAL = ("completed", "failed", "cancelled")


def wait_for(predicate: Callable[[], object], timeout_s: float = 10) -> bool:
    """Poll ``predicate`` until it is truthy (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def settle(settings: Settings, told: Iterable[Told], *, timeout_s: float) -> None:
    """Wait until every told turn still on record has ended and its session's mailbox is
    empty (a turn lost with Redis's last second has no record: nothing to wait for)."""
    told = list(told)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    try:
        pending = told
        while time.monotonic() < deadline:
            pending = [t for t in told if not _ended(client, settings, t)]
            if not pending:
                return
            time.sleep(0.2)
        raise AssertionError(f"{len(pending)} turns never ended, e.g. {pending[:3]}")
    finally:
        client.close()


def _ended(client: redis.Redis, settings: Settings, told: Told) -> bool:
    keys = SessionKeys(settings.key_prefix, told.tenant, told.session)
    raw = client.hget(keys.turns, told.turn_id)
    if raw is None:
        return client.llen(keys.mailbox) == 0
    return json.loads(raw)["status"] in TERMINAL  # type: ignore[arg-type]


def metric(base_url: str, name: str, label: str | None = None, **labels: str) -> float:
    """The sum of ``name``'s samples at ``{base_url}/metrics`` (only those with a label of
    value ``label``, when given, and with each of ``labels``)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == name
                and (label is None or label in sample.labels.values())
                and all(sample.labels.get(k) == v for k, v in labels.items())
            ):
                total += sample.value
    return total


def metrics_of(urls: Iterable[str], name: str, label: str | None = None, **labels: str) -> float:
    """``metric`` summed over several processes."""
    return sum(metric(url, name, label, **labels) for url in urls)


def ledger_of(told: Iterable[Told], may_be_lost: tuple[float, float] | None = None) -> Ledger:
    """A ledger of what clients were told; a turn told inside ``may_be_lost`` (a window of
    ``time.monotonic()`` values) may be gone, with the writes Redis had not yet made durable."""
    ledger = Ledger()
    for t in sorted(told, key=lambda t: t.at):
        if may_be_lost is not None and may_be_lost[0] <= t.at <= may_be_lost[1]:
            ledger.indeterminate(t.tenant, t.session, t.content)
        else:
            ledger.accepted(t.tenant, t.session, t.turn_id, t.seq, t.content, t.strategy)
    return ledger


def verdict(
    settings: Settings,
    told: Iterable[Told],
    *,
    may_be_lost: tuple[float, float] | None = None,
    received: Iterable[Received] = (),
) -> list[str]:
    """The checker's findings over a run (empty when clean)."""
    ledger = ledger_of(told, may_be_lost)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        end = observe_end(client, settings, ledger, received=received)
    finally:
        client.close()
    return [str(v) for v in check(ledger, end)]
