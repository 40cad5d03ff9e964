"""Question 3: with a slow model, does one worker process keep >= 100 turns in flight?

chatlane: ``CHATLANE_ECHO_DELAY_S=1`` (every model call takes ``--delay`` seconds), ONE
worker process whose engine drains ``--concurrency`` sessions at once (128). Each
round enqueues ``--waves`` x concurrency turns, one per fresh session (each turn its own
Celery wake-up), exactly as the API does (``benchmarks._load``), and is timed until all
are completed. In-flight work is sampled every 50 ms (session locks held; for Celery,
kombu's unacked hash).

Baseline, same run, same Redis and pool: raw Celery tasks that sleep ``--delay`` seconds
(``bench.sleep``), enqueued and timed the same way; Celery's own counters must show the
worker ran every one. The worker processes' peak and current resident memory come from
``/proc/<pid>/status`` (VmHWM, VmRSS). Each figure is the median over rounds.

    .venv/bin/python -m benchmarks.slow_model [--waves 5] [--concurrency 128] [--rounds 3]
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
    log,
    logs_dir,
    medians,
    memory_kib,
    ratio,
    redis_pid,
    time_bound,
)
from benchmarks.celery_baseline import SLEEP, verify_ran
from cli.redis_server import ManagedRedis
from shared.settings import Settings
from tests.support.cluster import Cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=1.0, help="model / task seconds")
    parser.add_argument(
        "--concurrency", type=int, default=128, help="chatlane's capacity; Celery's threads"
    )
    parser.add_argument("--waves", type=int, default=5, help="turns per round = waves x threads")
    parser.add_argument("--turns-per-session", type=int, default=1)
    parser.add_argument("--batch", type=int, default=100, help="items enqueued at a time")
    add_common_args(parser, max_s=300)
    args = parser.parse_args(argv)
    report = Report("slow_model", vars(args))
    count = args.waves * args.concurrency

    with time_bound(args.max_seconds), ManagedRedis() as server:
        settings = Settings(redis_url=server.url, queue="chatlane", echo_delay_s=args.delay)
        base_settings = Settings(redis_url=server.url, queue="baseline")
        pool = {"workers": 1, "concurrency": args.concurrency}
        with (
            Cluster(settings, logs_dir("slow_model/chatlane"), api=False, **pool) as lane,
            BaselineCluster(base_settings, logs_dir("slow_model/baseline"), **pool) as base,
        ):
            client = redis.Redis.from_url(server.url)
            rpid = redis_pid(client)
            lane_pid, base_pid = lane.worker_procs[0].pid, base.worker_procs[0].pid
            idle = {"chatlane": memory_kib(lane_pid), "celery": memory_kib(base_pid)}
            lane_rounds, base_rounds = [], []
            with Profiler("slow_model", {"worker": lane_pid}, enabled=args.profile) as profiler:
                for r in range(args.rounds):
                    log(f"round {r + 1}/{args.rounds}")
                    lane_rounds.append(
                        chatlane_batch(
                            client, settings, turns=count, per_session=args.turns_per_session,
                            batch=args.batch, tag=f"r{r}", pids={"worker": lane_pid, "redis": rpid},
                        )
                    )  # fmt: skip
                    log(f"chatlane: {lane_rounds[-1]['per_s']:.1f} turns/s")
                    base_rounds.append(
                        celery_batch(
                            client, base_settings.queue, task=SLEEP, args=lambda n: [args.delay, n],
                            count=count, batch=args.batch, pids={"worker": base_pid, "redis": rpid},
                        )
                    )  # fmt: skip
                    log(f"celery  : {base_rounds[-1]['per_s']:.1f} tasks/s")
            mem = {"chatlane": memory_kib(lane_pid), "celery": memory_kib(base_pid)}
            client.close()
            ran = verify_ran(base_settings, SLEEP, args.rounds * count)

    lane_m, base_m = medians(lane_rounds), medians(base_rounds)
    ideal = args.concurrency / args.delay

    def cells(m: dict[str, float], system: str) -> list[object]:
        flight = f"{m['in_flight_median']:.0f} / {m['in_flight_max']:.0f}"
        rss = f"{idle[system]['VmRSS'] / 1024:.0f} -> {mem[system]['VmRSS'] / 1024:.0f}"
        hwm = mem[system]["VmHWM"] / 1024
        return [m["per_s"], m["per_s"] / ideal, m["seconds"], flight, m["cpu_ms_worker"], hwm, rss]

    report.table(
        f"{count} per round ({args.waves} waves), 1 worker x {args.concurrency} threads, "
        f"{args.delay:g} s per call, median of {args.rounds} rounds",
        ["", "per s", "of ideal", "seconds", "in flight (median / max)", "worker CPU ms/item",
         "VmHWM MiB", "VmRSS MiB (idle -> end)"],
        [
            ["chatlane turns", *cells(lane_m, "chatlane")],
            ["Celery sleep tasks", *cells(base_m, "celery")],
            ["ratio chatlane / Celery", ratio(lane_m["per_s"], base_m["per_s"]), "",
             ratio(lane_m["seconds"], base_m["seconds"]), "",
             ratio(lane_m["cpu_ms_worker"], base_m["cpu_ms_worker"]),
             ratio(mem["chatlane"]["VmHWM"], mem["celery"]["VmHWM"]), ""],
        ],
    )  # fmt: skip
    report.goal("turns/s with one worker process", lane_m["per_s"], 85.0, higher_is_better=True)
    report.data = {
        "chatlane_rounds": lane_rounds,
        "celery_rounds": base_rounds,
        "chatlane": lane_m,
        "celery": base_m,
        "memory_kib": mem,
        "memory_kib_idle": idle,
        "ideal_per_s": ideal,
        "verified": {"celery_sleeps_run": ran},
        "profiles": profiler.summaries,
    }
    report.finish()


if __name__ == "__main__":
    main()
