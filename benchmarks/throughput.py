"""Question 2: how many turns per second do two worker processes complete?

chatlane: the instant ``echo`` model, ``--workers`` worker processes (threads pool,
``--concurrency`` threads each). Each round enqueues ``--turns`` turns exactly as the API
does (``benchmarks._load``: ``ZADD`` + ``accept.lua``, then the ``LPUSH`` wake-up when no
worker holds the session lock), pipelined in batches of ``--batch``, and is timed from
the first enqueue until every wake-up is acknowledged and every turn is ``completed``.
By default every turn is in its own session (``--turns-per-session 1``), so every turn
costs one Celery task: a user waits for each reply before sending the next.

Baseline, same run, same Redis, same worker count, pool and concurrency: raw Celery
no-op tasks (``bench.noop``), enqueued and timed the same way. Rounds alternate; each
figure is the median over rounds.

    .venv/bin/python -m benchmarks.throughput [--turns 2000] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse

import redis

from benchmarks._load import celery_batch, chatlane_batch
from benchmarks._support import (
    BaselineCluster,
    Report,
    add_common_args,
    log,
    logs_dir,
    medians,
    redis_pid,
    time_bound,
)
from benchmarks.celery_baseline import NOOP
from shared.redis_server import ManagedRedis
from shared.settings import Settings
from tests.support.cluster import Cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000, help="turns (and no-op tasks) per round")
    parser.add_argument("--turns-per-session", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (both systems)")
    parser.add_argument("--concurrency", type=int, default=16, help="pool threads per worker")
    parser.add_argument("--batch", type=int, default=100, help="items per enqueue pipeline")
    add_common_args(parser, max_s=300)
    args = parser.parse_args(argv)
    report = Report("throughput", vars(args))

    with time_bound(args.max_seconds), ManagedRedis() as server:
        settings = Settings(redis_url=server.url, queue="chatlane")
        base_settings = Settings(redis_url=server.url, queue="baseline")
        with (
            Cluster(settings, logs_dir("throughput/chatlane"), workers=args.workers,
                    concurrency=args.concurrency, api=False) as lane,
            BaselineCluster(base_settings, logs_dir("throughput/baseline"),
                            workers=args.workers, concurrency=args.concurrency) as base,
        ):
            client = redis.Redis.from_url(server.url)
            rpid = redis_pid(client)
            lane_pids = {f"worker{i}": p.pid for i, p in enumerate(lane.worker_procs)}
            base_pids = {f"worker{i}": p.pid for i, p in enumerate(base.worker_procs)}

            def lane_round(tag: str, turns: int, pids: dict[str, int]) -> dict[str, float]:
                return chatlane_batch(client, settings, turns=turns,
                                      per_session=args.turns_per_session, batch=args.batch,
                                      tag=tag, pids=pids)

            def base_round(count: int, pids: dict[str, int]) -> dict[str, float]:
                return celery_batch(client, base_settings.queue, task=NOOP, args=lambda n: [n],
                                    count=count, batch=args.batch, pids=pids)

            log("warming up")
            lane_round("warm", 200, {})
            base_round(200, {})
            lane_rounds, base_rounds = [], []
            for r in range(args.rounds):
                log(f"round {r + 1}/{args.rounds}")
                lane_rounds.append(lane_round(f"r{r}", args.turns, {**lane_pids, "redis": rpid}))
                log(f"chatlane: {lane_rounds[-1]['per_s']:.0f} turns/s")
                base_rounds.append(base_round(args.turns, {**base_pids, "redis": rpid}))
                log(f"celery  : {base_rounds[-1]['per_s']:.0f} tasks/s")
            client.close()

    lane_m, base_m = medians(lane_rounds), medians(base_rounds)
    ratio = lane_m["per_s"] / base_m["per_s"]
    report.table(
        f"{args.turns} per round, {args.workers} workers x {args.concurrency} threads, "
        f"median of {args.rounds} rounds",
        ["", "per s", "seconds", "Celery tasks/item", "worker CPU ms/item", "worker cores busy",
         "redis CPU ms/item"],
        [
            [f"chatlane turns (echo, {args.turns_per_session}/session)", lane_m["per_s"],
             lane_m["seconds"], lane_m["tasks_per_item"], lane_m["cpu_ms_workers"],
             lane_m["cpu_util_workers"], lane_m["cpu_ms_redis"]],
            ["Celery no-op tasks", base_m["per_s"], base_m["seconds"], base_m["tasks_per_item"],
             base_m["cpu_ms_workers"], base_m["cpu_util_workers"], base_m["cpu_ms_redis"]],
            ["ratio chatlane / Celery", ratio, lane_m["seconds"] / base_m["seconds"], "",
             lane_m["cpu_ms_workers"] / base_m["cpu_ms_workers"],
             lane_m["cpu_util_workers"] / base_m["cpu_util_workers"],
             lane_m["cpu_ms_redis"] / base_m["cpu_ms_redis"]],
        ],
    )
    report.goal("turns/s / Celery no-op tasks/s", ratio, 0.70, higher_is_better=True)
    report.data = {"chatlane_rounds": lane_rounds, "celery_rounds": base_rounds,
                   "chatlane": lane_m, "celery": base_m}
    report.finish()


if __name__ == "__main__":
    main()
