"""Question 2: how many turns per second do two worker processes complete?

chatlane: the instant ``echo`` model, ``--workers`` worker processes (threads pool,
``--concurrency`` threads each). Each round enqueues ``--turns`` turns exactly as the API
does (``benchmarks._load``: ``shared.intake.submit``, i.e. ``ZADD`` + ``accept.lua``, then
the ``LPUSH`` wake-up when no worker holds the session lock), ``--batch`` submissions at
a time, and is timed from the first enqueue until every wake-up is acknowledged and
every turn is ``completed``.
By default every turn is in its own session (``--turns-per-session 1``), so every turn
costs one Celery task: a user waits for each reply before sending the next.

Baseline, same run, same Redis, same worker count, pool and concurrency: raw Celery
no-op tasks (``bench.noop``), enqueued and timed the same way; afterwards Celery's own
counters must show that the workers ran every one of them. Rounds alternate; each figure
is the median over rounds.

    .venv/bin/python -m benchmarks.throughput [--turns 2000] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse

import redis

from benchmarks._load import celery_batch, chatlane_batch
from benchmarks._support import (
    BaselineCluster,
    Profiler,
    Report,
    add_common_args,
    attribute,
    log,
    logs_dir,
    medians,
    ratio,
    redis_pid,
    time_bound,
)
from benchmarks.celery_baseline import NOOP, verify_ran
from cli.redis_server import ManagedRedis
from shared.settings import Settings
from tests.support.cluster import Cluster

WARMUP = 200
# Where a worker's Python time goes, by stack content (first match wins); --profile only.
# py-spy does not always see a coroutine's callers: engine-thread samples without a
# drain_session frame are split by what they do.
COMPONENTS: list[tuple[str, list[str]]] = [
    ("chatlane sweeper (worker/sweeper.py)", ["run_sweeper"]),
    ("chatlane lease heartbeat", ["Heartbeat.run"]),
    ("chatlane drain: call_model (LangChain astream)", ["drain_session", "call_model"]),
    ("chatlane drain: store.commit", ["drain_session", "SessionStore.commit"]),
    ("chatlane drain: store.begin", ["drain_session", "SessionStore.begin"]),
    ("chatlane drain: the rest (prompt, deltas, lease)", ["drain_session"]),
    ("chatlane engine: taking sessions over", ["Engine._main", "Engine._spawn"]),
    ("chatlane engine: a drain's end", ["Engine._main", "Engine._drained"]),
    ("chatlane engine: redis-py, caller not seen", ["Engine._main", "(redis/asyncio/"]),
    ("chatlane engine: the rest (event loop)", ["Engine._main"]),
    ("chatlane task: handing the session to the engine", ["Engine.submit"]),
    ("Celery thread pool (submit, tracing, queue)", ["(concurrent/futures/thread.py"]),
    ("Celery consumer: receive (BRPOP, unacked bookkeeping)", ["asynloop", "_brpop_read"]),
    ("Celery consumer: ack", ["asynloop", "basic_ack"]),
    ("Celery consumer: the rest", ["asynloop"]),
]
COLUMNS = [
    ("per s", "per_s"),
    ("seconds", "seconds"),
    ("Celery tasks/item", "tasks_per_item"),
    ("worker CPU ms/item", "cpu_ms_workers"),
    ("of which user", "cpu_user_ms_workers"),
    ("of which sys", "cpu_sys_ms_workers"),
    ("worker cores busy", "cpu_util_workers"),
    ("redis CPU ms/item", "cpu_ms_redis"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000, help="turns (and no-ops) per round")
    parser.add_argument("--turns-per-session", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (both systems)")
    parser.add_argument("--concurrency", type=int, default=16, help="pool threads per worker")
    parser.add_argument("--batch", type=int, default=100, help="items enqueued at a time")
    parser.add_argument(
        "--sweep-interval", type=float, default=Settings().sweep_interval_s,
        help="CHATLANE_SWEEP_INTERVAL_S of the chatlane workers (diagnostics)",
    )  # fmt: skip
    add_common_args(parser, max_s=300)
    args = parser.parse_args(argv)
    report = Report("throughput", vars(args))

    with time_bound(args.max_seconds), ManagedRedis() as server:
        url = server.url
        settings = Settings(redis_url=url, queue="chatlane", sweep_interval_s=args.sweep_interval)
        base_settings = Settings(redis_url=url, queue="baseline")
        pool = {"workers": args.workers, "concurrency": args.concurrency}
        with (
            Cluster(settings, logs_dir("throughput/chatlane"), api=False, **pool) as lane,
            BaselineCluster(base_settings, logs_dir("throughput/baseline"), **pool) as base,
        ):
            client = redis.Redis.from_url(url)
            rpid = redis_pid(client)
            lane_pids = {f"worker{i}": p.pid for i, p in enumerate(lane.worker_procs)}
            base_pids = {f"worker{i}": p.pid for i, p in enumerate(base.worker_procs)}

            def lane_round(tag: str, turns: int, pids: dict[str, int]) -> dict[str, float]:
                per_session = args.turns_per_session if tag != "warm" else 1
                return chatlane_batch(
                    client, settings, turns=turns, per_session=per_session, batch=args.batch,
                    tag=tag, pids=pids,
                )  # fmt: skip

            def base_round(count: int, pids: dict[str, int]) -> dict[str, float]:
                return celery_batch(
                    client, base_settings.queue, task=NOOP, args=lambda n: [n], count=count,
                    batch=args.batch, pids=pids,
                )  # fmt: skip

            log("warming up")
            lane_round("warm", WARMUP, {})
            base_round(WARMUP, {})
            lane_rounds, base_rounds = [], []
            with Profiler("throughput", lane_pids, enabled=args.profile) as profiler:
                for r in range(args.rounds):
                    log(f"round {r + 1}/{args.rounds}")
                    lane_rounds.append(
                        lane_round(f"r{r}", args.turns, {**lane_pids, "redis": rpid})
                    )
                    log(f"chatlane: {lane_rounds[-1]['per_s']:.0f} turns/s")
                    base_rounds.append(base_round(args.turns, {**base_pids, "redis": rpid}))
                    log(f"celery  : {base_rounds[-1]['per_s']:.0f} tasks/s")
            client.close()
            ran = verify_ran(base_settings, NOOP, WARMUP + args.rounds * args.turns)

    lane_m, base_m = medians(lane_rounds), medians(base_rounds)
    label = f"chatlane turns (echo, {args.turns_per_session}/session)"
    rows = [[label, *(lane_m[k] for _, k in COLUMNS)]]
    rows += [["Celery no-op tasks", *(base_m[k] for _, k in COLUMNS)]]
    rows += [["ratio chatlane / Celery", *(ratio(lane_m[k], base_m[k]) for _, k in COLUMNS)]]
    speed = ratio(lane_m["per_s"], base_m["per_s"])
    title = f"{args.turns} per round, {args.workers} workers x {args.concurrency} threads"
    report.table(f"{title}, median of {args.rounds} rounds", ["", *(h for h, _ in COLUMNS)], rows)
    if args.profile:
        shares = attribute([profiler.dir / f"{role}.txt" for role in lane_pids], COMPONENTS)
        report.table(
            "Workers' Python time by component (py-spy --gil samples; profiling skews the rates)",
            ["component", "share %"],
            [[label, share] for label, share in sorted(shares.items(), key=lambda kv: -kv[1])],
        )
    report.goal("turns/s / Celery no-op tasks/s", speed, 0.70, higher_is_better=True)
    report.data = {
        "chatlane_rounds": lane_rounds,
        "celery_rounds": base_rounds,
        "chatlane": lane_m,
        "celery": base_m,
        "verified": {"celery_noops_run": ran},
        "profiles": profiler.summaries,
    }
    report.finish()


if __name__ == "__main__":
    main()
