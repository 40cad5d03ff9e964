"""The chaos soak: streaming load from many sessions of several tenants, with every
double-texting strategy, a share of turns with webhooks and a share of messages from a
Telegram bot, while a worker is SIGKILLed every few seconds (and replaced), Redis is
SIGKILLed once and restarted from its append-only file, and the webhook receiver flaps
between answering 500 and 200. At the end the ledger checker holds what every client was
told against Redis, the receiver and the platform: the goal is no violation at all.

Setup: a private redis-server (AOF, fsync every second), the loopback streaming model
(``--tokens`` words ``--interval`` s apart) and the webhook receiver and platform fake in
this process, two API processes and ``--workers`` worker processes. Turns told within the
fsync window before Redis's crash may be lost (they count as unknown, not as violations).

    python -m benchmarks.soak --duration 180          # the full run of docs/benchmarks.md
    python -m benchmarks.soak --duration 30 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import secrets
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from cli.redis_server import ManagedRedis
from shared.apikeys import with_ring
from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store.records import ChannelRoute
from tests.support.checker import message_for
from tests.support.cluster import Cluster
from tests.support.faults import settle
from tests.support.ledger import Ledger, observe_end
from tests.support.ledger_check import check, counts, report
from tests.support.platform_requests import (
    TELEGRAM_SECRET_TOKEN,
    telegram_request,
    telegram_text_message,
)
from tests.support.platforms import TELEGRAM_TOKEN, PlatformsThread
from tests.support.receiver import ReceiverThread
from tests.support.streaming_server import StreamingModelServer
from tests.support.traffic import Told, Traffic, User

FSYNC_WINDOW_S = 2.0
STRATEGIES = ("enqueue", "enqueue", "coalesce", "interrupt", "rollback", "reject")


@dataclass
class Config:
    duration_s: float = 180.0
    tenants: int = 3
    users_per_tenant: int = 12
    chats_per_tenant: int = 3
    workers: int = 3
    kill_every_s: float = 6.0
    tokens: int = 100
    interval_s: float = 0.01
    pause_s: float = 1.5
    seed: int = 1
    chaos: bool = True  # False: the same load with no fault (the baseline)


@dataclass
class Result:
    turns: int = 0
    channel_messages: int = 0
    webhooks_received: int = 0
    replies_sent: int = 0
    worker_kills: int = 0
    redis_restarts: int = 0
    receiver_flaps: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    unknown: int = 0  # told inside the fsync window before Redis's crash
    violations: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    latency_p50_s: float = 0.0
    latency_p99_s: float = 0.0
    settle_s: float = 0.0


class Chaos:
    """Kills a random worker every ``kill_every_s`` (starting a new one), restarts Redis
    once at the middle of the run, and makes the receiver flap, for ``duration_s``.

    It runs on the thread that started the cluster: the processes it starts die with the
    thread that started them (``PR_SET_PDEATHSIG``)."""

    def __init__(
        self,
        cluster: Cluster,
        server: ManagedRedis,
        hook: ReceiverThread,
        config: Config,
    ) -> None:
        self.cluster, self.server, self.hook, self.config = cluster, server, hook, config
        self.kills = self.restarts = self.flaps = 0
        self.crashed_at: float | None = None
        self._random = random.Random(config.seed)

    def run(self) -> None:
        started = time.monotonic()
        next_kill = started + self.config.kill_every_s
        restart_at = started + self.config.duration_s / 2
        names = itertools.count(self.config.workers + 1)
        while (now := time.monotonic()) < started + self.config.duration_s:
            time.sleep(0.5)
            if not self.config.chaos:
                continue
            self._flap(now - started)
            if self.crashed_at is None and now >= restart_at:
                self._restart_redis()
            if now >= next_kill:
                next_kill = now + self.config.kill_every_s
                live = [p for p in self.cluster.worker_procs if p.poll() is None]
                if live:
                    victim = self._random.choice(live)
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    self.kills += 1
                    self.cluster.spawn_worker(f"w{next(names)}")
        self.hook.receiver.script.clear()

    def _flap(self, elapsed: float) -> None:
        """Down (500) for 2 s of every 5."""
        down = elapsed % 5 < 2
        script = self.hook.receiver.script
        if down and not script:
            script.extend([("status", 500)] * 10_000)
            self.flaps += 1
        elif not down and script:
            script.clear()

    def _restart_redis(self) -> None:
        assert self.server.proc is not None
        self.crashed_at = time.monotonic()
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait()
        time.sleep(1.0)
        self.server.start()
        self.restarts += 1


class Chats:
    """Each tenant's Telegram chats sending messages to its bot (a platform retries a
    message its webhook did not take, with the same update id, as Telegram does)."""

    def __init__(self, base_urls: list[str], bots: dict[str, str], config: Config) -> None:
        self.base_urls, self.bots, self.config = base_urls, bots, config
        self.told: list[tuple[str, str, str, int, float]] = []  # tenant, endpoint, text, chat, at
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._guard = threading.Lock()

    def start(self) -> Chats:
        for t, (tenant, url) in enumerate(self.bots.items()):
            for c in range(self.config.chats_per_tenant):
                chat = 7_000_000 + t * 1000 + c
                thread = threading.Thread(target=self._run, args=(tenant, url, chat), daemon=True)
                self._threads.append(thread)
                thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, tenant: str, url: str, chat: int) -> None:
        http = httpx.Client(timeout=10)
        try:
            for n in itertools.count():
                if self._stop.wait(self.config.pause_s * 4):
                    return
                text = message_for(f"{tenant}.chat{chat}", n)
                update = telegram_text_message(chat_id=chat, text=text)
                request = telegram_request(update, secret_token=TELEGRAM_SECRET_TOKEN)
                for attempt in itertools.count():
                    try:
                        answer = http.post(url, **request.kwargs())
                        if answer.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(min(2.0, 0.2 * (attempt + 1)))
                with self._guard:
                    self.told.append((tenant, url, text, chat, time.monotonic()))
        finally:
            http.close()


def run(config: Config, workdir: Path) -> Result:
    """One soak; its result (``problems`` empty when the checker found nothing)."""
    rng = random.Random(config.seed)
    with (
        ManagedRedis(data_dir=workdir / "redis") as server,
        StreamingModelServer(tokens=config.tokens, interval_s=config.interval_s) as model,
        ReceiverThread() as hook,
        PlatformsThread() as platforms,
    ):
        tag = secrets.token_hex(4)
        settings = Settings(
            redis_url=server.url,
            key_prefix=f"soak{tag}",
            queue=f"chatlane-soak{tag}",
            model="openai:loopback",
            openai_base_url=model.base_url,
            openai_api_key="test-key",
            lock_ttl_s=2.0,
            sweep_interval_s=0.5,
            model_timeout_s=10.0,
            turn_deadline_s=60.0,
            webhook_allow_private=True,
            channel_allow_private=True,
            webhook_backoff_s=0.2,
            webhook_max_backoff_s=2.0,
            webhook_max_attempts=30,
            channel_backoff_s=0.2,
            channel_max_backoff_s=2.0,
            channel_max_attempts=30,
            settle_heap=False,
        )
        tenants = [f"tenant{i}" for i in range(config.tenants)]
        keys = {t: with_ring(server.url, settings.key_prefix, lambda r, t=t: r.create(t))[1]
                for t in tenants}  # fmt: skip
        with Cluster(settings, workdir / "logs", workers=config.workers, apis=2) as cluster:
            bots = _connect_bots(cluster.base_url, keys, platforms.base_url)
            users = [
                User(
                    tenant,
                    f"s{u:02d}",
                    api_key=keys[tenant],
                    strategy=STRATEGIES[u % len(STRATEGIES)],
                    body={"webhook": hook.url} if rng.random() < 0.3 else {},
                )
                for tenant in tenants
                for u in range(config.users_per_tenant)
            ]
            traffic = Traffic(cluster.base_urls, users, pause_s=config.pause_s)
            chats = Chats(cluster.base_urls, {t: url for t, (_, url) in bots.items()}, config)
            chaos = Chaos(cluster, server, hook, config)
            started = time.monotonic()
            traffic.start(), chats.start()
            chaos.run()
            traffic.stop(), chats.stop()
            settled = time.monotonic()
            settle(settings, traffic.told, timeout_s=120)
            window = None
            if chaos.crashed_at is not None:
                window = (chaos.crashed_at - FSYNC_WINDOW_S, chaos.crashed_at)
            ledger = _ledger(traffic.told, chats.told, users, bots, window)
            violations = _checked(settings, ledger, hook, platforms, deadline_s=60)
            settle_s = time.monotonic() - settled
            latencies = _latencies(settings, traffic.told, started)
    result = Result(
        turns=len(traffic.told),
        channel_messages=len(chats.told),
        webhooks_received=len(hook.receiver.received),
        replies_sent=len(platforms.fake.sent),
        worker_kills=chaos.kills,
        redis_restarts=chaos.restarts,
        receiver_flaps=chaos.flaps,
        answers={f"{s} {k}": n for (s, k), n in traffic.answers.items()},
        unknown=sum(1 for e in ledger.entries if not e.certain),
        violations={k: n for k, n in counts(violations).items() if n},
        problems=[str(v) for v in violations[:40]],
        latency_p50_s=statistics.median(latencies) if latencies else 0.0,
        latency_p99_s=_quantile(latencies, 0.99),
        settle_s=settle_s,
    )
    if violations:
        print(report(violations))
    return result


def _connect_bots(
    base_url: str, keys: dict[str, str], platforms_url: str
) -> dict[str, tuple[str, str]]:
    """A Telegram bot per tenant: tenant -> (endpoint id, webhook URL)."""
    bots = {}
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for tenant, key in keys.items():
            answer = http.post(
                "/v1/channels",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "channel": "telegram",
                    "credentials": {"bot_token": TELEGRAM_TOKEN,
                                    "secret_token": TELEGRAM_SECRET_TOKEN},
                    "api_base": platforms_url,
                    "strategy": "enqueue",
                    "per_second": 1000,
                },
            )  # fmt: skip
            answer.raise_for_status()
            endpoint = answer.json()
            bots[tenant] = (endpoint["id"], endpoint["webhook_url"])
    return bots


def _ledger(
    told: list[Told],
    chat_told: list[tuple[str, str, str, int, float]],
    users: list[User],
    bots: dict[str, tuple[str, str]],
    window: tuple[float, float] | None,
) -> Ledger:
    ledger = Ledger()
    hooks = {(u.tenant, u.session): u.body.get("webhook") for u in users}
    for endpoint_id, _ in bots.values():
        ledger.bot(endpoint_id, channel="telegram")
    events = [(t.at, "turn", t) for t in told] + [(c[4], "chat", c) for c in chat_told]
    for at, kind, item in sorted(events, key=lambda e: e[0]):
        unsure = window is not None and window[0] <= at <= window[1]
        if kind == "turn":
            t: Told = item  # type: ignore[assignment]
            hook = hooks[t.tenant, t.session]
            if unsure:
                ledger.indeterminate(t.tenant, t.session, t.content, webhook=hook)
            else:
                ledger.accepted(t.tenant, t.session, t.turn_id, t.seq, t.content, t.strategy,
                                webhook=hook)  # fmt: skip
        else:
            tenant, _, text, chat, _ = item  # type: ignore[misc]
            endpoint_id = bots[tenant][0]
            route = ChannelRoute(endpoint_id=endpoint_id, chat=str(chat), message="-")
            session = f"telegram:{endpoint_id}:{chat}"
            if unsure:
                ledger.indeterminate(tenant, session, text, channel=route)
            else:
                ledger.accepted(tenant, session, None, None, text, channel=route)
    return ledger


def _checked(
    settings: Settings,
    ledger: Ledger,
    hook: ReceiverThread,
    platforms: PlatformsThread,
    *,
    deadline_s: float,
) -> list[Any]:
    """The checker's verdict once deliveries stop arriving (or ``deadline_s`` passes):
    webhooks and replies retried through the flapping are given time to land."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            end = observe_end(
                client, settings, ledger, received=list(hook.receiver.received),
                sent=list(platforms.fake.sent),
            )  # fmt: skip
            found = check(ledger, end)
            waiting = [v for v in found if v.kind in ("webhook_missing", "reply_missing")]
            if not waiting or time.monotonic() > deadline:
                return found
            time.sleep(1)
    finally:
        client.close()


def _latencies(settings: Settings, told: list[Told], started: float) -> list[float]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        found = []
        for t in told:
            raw = client.hget(SessionKeys(settings.key_prefix, t.tenant, t.session).turns,
                              t.turn_id)  # fmt: skip
            record = json.loads(raw) if raw else None  # type: ignore[arg-type]
            if record and record.get("finished_at") and record["status"] == "completed":
                found.append((record["finished_at"] - record["created_at"]) / 1000)
        return found
    finally:
        client.close()


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _table(config: Config, result: Result) -> str:
    rows = [
        ("duration (s)", f"{config.duration_s:.0f}"),
        ("turns accepted (API)", result.turns),
        ("messages from Telegram chats", result.channel_messages),
        ("worker SIGKILLs", result.worker_kills),
        ("Redis SIGKILL + AOF restarts", result.redis_restarts),
        ("receiver flaps (500 for 2 s)", result.receiver_flaps),
        ("webhook requests received", result.webhooks_received),
        ("chat replies sent", result.replies_sent),
        ("told in the fsync window (may be lost)", result.unknown),
        (
            "latency p50 / p99 (s, accept to commit)",
            f"{result.latency_p50_s:.2f} / {result.latency_p99_s:.2f}",
        ),
        ("settled after the chaos in (s)", f"{result.settle_s:.1f}"),
        ("violations", sum(result.violations.values())),
    ]
    width = max(len(str(k)) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--users", type=int, default=12, help="API sessions per tenant")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=6.0)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--pause", type=float, default=1.5, help="s between a user's messages")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calm", action="store_true", help="the same load, no faults")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    config = Config(
        duration_s=args.duration, tenants=args.tenants, users_per_tenant=args.users,
        workers=args.workers, kill_every_s=args.kill_every, tokens=args.tokens,
        interval_s=args.interval, pause_s=args.pause, seed=args.seed, chaos=not args.calm,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="chatlane-soak-") as tmp:
        result = run(config, Path(tmp))
    print(_table(config, result))
    print("violations by kind:", result.violations or "none")
    if args.json:
        args.json.write_text(json.dumps({"config": asdict(config), **asdict(result)}, indent=2))
    raise SystemExit(1 if result.violations else 0)


if __name__ == "__main__":
    main()
