"""Question 1: what does chatlane add to a Celery round trip?

chatlane: ``POST /v1/sessions/<id>/turns?wait=10`` with the instant ``echo`` model; the
request answers ``200`` with the completed turn, so its latency is HTTP accept → commit →
the API noticing the final event → response. Sequential by default (``--clients 1``), on
raw keep-alive ``http.client`` connections, rotating over ``--sessions`` sessions.

Baseline, same run, same Redis (broker and result backend), same Celery configuration
and pool size: ``bench.ping.delay().get()`` — publish, a worker runs a task that returns
``"pong"``, the result reaches the caller through the Redis result backend. That is the
full request → result round trip a Celery user would write, the closest analogue of
``?wait``. Rounds alternate chatlane / baseline; each table cell is the median over rounds.

    .venv/bin/python -m benchmarks.overhead [--turns 2000] [--rounds 3] [--clients 1]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from benchmarks._support import (
    BaselineCluster,
    CpuMeter,
    KeepAlive,
    Report,
    add_common_args,
    log,
    logs_dir,
    medians,
    percentile,
    redis_pid,
    time_bound,
)
from benchmarks.celery_baseline import PING, create_baseline
from shared.redis_server import ManagedRedis
from shared.settings import Settings
from tests.support.cluster import Cluster

Op = Callable[[int], None]


def run_clients(make_op: Callable[[int], tuple[Op, Callable[[], None]]], clients: int,
                turns: int) -> tuple[list[float], float]:
    """Run ``turns`` operations split over ``clients`` threads; returns latencies (s), wall (s)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    per_client = turns // clients

    def client(index: int) -> None:
        op, close = make_op(index)
        try:
            out = latencies[index]
            for n in range(per_client):
                t0 = time.perf_counter()
                op(n)
                out.append(time.perf_counter() - t0)
        except BaseException as exc:
            errors.append(exc)
        finally:
            close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return [x for xs in latencies for x in xs], wall


def chatlane_ops(port: int, round_tag: str, sessions: int, clients: int):  # type: ignore[no-untyped-def]
    body = json.dumps({"content": "hello"}).encode()

    def make(index: int) -> tuple[Op, Callable[[], None]]:
        http = KeepAlive(port)
        mine = [f"{round_tag}-c{index}-s{s}" for s in range(max(1, sessions // clients))]

        def op(n: int) -> None:
            path = f"/v1/sessions/{mine[n % len(mine)]}/turns?wait=10"
            status, raw = http.request("POST", path, body)
            if status != 200 or b'"status":"completed"' not in raw:
                raise RuntimeError(f"turn not completed: {status} {raw[:300]!r}")

        return op, http.close

    return make


def baseline_ops(settings: Settings):  # type: ignore[no-untyped-def]
    def make(index: int) -> tuple[Op, Callable[[], None]]:
        app = create_baseline(settings)  # one client app per thread: result consumers are not shared
        ping = app.signature(PING)

        def op(n: int) -> None:
            if ping.delay().get(timeout=10) != "pong":
                raise RuntimeError("ping returned something else")

        return op, app.close

    return make


def measure(name: str, make: Any, clients: int, turns: int, pids: dict[str, int]) -> dict[str, float]:
    meter = CpuMeter(list(pids.values())).start()
    per_pid = {role: CpuMeter([pid]).start() for role, pid in pids.items()}
    lat, wall = run_clients(make, clients, turns)
    meter.stop()
    ms = [x * 1000 for x in lat]
    row = {
        "n": float(len(ms)),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms),
        "per_s": len(ms) / wall,
    }
    for role, m in per_pid.items():
        m.stop()
        row[f"cpu_ms_{role}"] = m.cpu_s * 1000 / len(ms)
    log(f"{name}: p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  ({row['per_s']:.0f}/s)")
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000, help="turns (and pings) per round")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--clients", type=int, default=1, help="concurrent client threads")
    parser.add_argument("--sessions", type=int, default=100, help="sessions the turns rotate over")
    parser.add_argument("--concurrency", type=int, default=8, help="worker pool threads (both)")
    add_common_args(parser, max_s=420)
    args = parser.parse_args(argv)
    report = Report("overhead", vars(args))

    with time_bound(args.max_seconds), ManagedRedis() as server:
        settings = Settings(redis_url=server.url, queue="chatlane")
        base_settings = Settings(redis_url=server.url, queue="baseline")
        with (
            Cluster(settings, logs_dir("overhead/chatlane"), workers=1,
                    concurrency=args.concurrency) as lane,
            BaselineCluster(base_settings, logs_dir("overhead/baseline"), workers=1,
                            concurrency=args.concurrency) as base,
        ):
            data = redis.Redis.from_url(server.url)
            assert lane.api is not None
            pids = {
                "api": lane.api.pid,
                "worker": lane.worker_procs[0].pid,
                "redis": redis_pid(data),
                "client": os.getpid(),
            }
            base_pids = {
                "worker": base.worker_procs[0].pid,
                "redis": pids["redis"],
                "client": os.getpid(),
            }
            log("warming up")
            run_clients(chatlane_ops(lane.port, "warm", args.sessions, args.clients),
                        args.clients, args.warmup)
            run_clients(baseline_ops(base_settings), args.clients, args.warmup)
            lane_rounds, base_rounds = [], []
            for r in range(args.rounds):
                log(f"round {r + 1}/{args.rounds}")
                lane_rounds.append(measure(
                    "chatlane", chatlane_ops(lane.port, f"r{r}", args.sessions, args.clients),
                    args.clients, args.turns, pids))
                base_rounds.append(measure(
                    "celery  ", baseline_ops(base_settings), args.clients, args.turns, base_pids))
            data.close()

    lane_m, base_m = medians(lane_rounds), medians(base_rounds)
    p50_ratio = lane_m["p50_ms"] / base_m["p50_ms"]
    p99_ratio = lane_m["p99_ms"] / base_m["p99_ms"]
    cols = ["p50_ms", "p90_ms", "p99_ms", "mean_ms", "per_s"]
    report.table(
        f"Latency, {args.turns} per round, {args.clients} client(s), median of {args.rounds} rounds",
        ["", "round trips/round", "p50 ms", "p90 ms", "p99 ms", "mean ms", "per s"],
        [
            ["chatlane POST ?wait=10 (echo)", args.turns, *(lane_m[c] for c in cols)],
            ["Celery .delay().get() no-op", args.turns, *(base_m[c] for c in cols)],
            ["ratio chatlane / Celery", "", *(lane_m[c] / base_m[c] for c in cols[:4]),
             lane_m["per_s"] / base_m["per_s"]],
        ],
    )
    report.table(
        "CPU per round trip (ms), median of rounds",
        ["", "API", "worker", "redis", "client", "total"],
        [
            ["chatlane", lane_m["cpu_ms_api"], lane_m["cpu_ms_worker"], lane_m["cpu_ms_redis"],
             lane_m["cpu_ms_client"],
             sum(lane_m[f"cpu_ms_{k}"] for k in ("api", "worker", "redis", "client"))],
            ["Celery", "", base_m["cpu_ms_worker"], base_m["cpu_ms_redis"],
             base_m["cpu_ms_client"],
             sum(base_m[f"cpu_ms_{k}"] for k in ("worker", "redis", "client"))],
        ],
    )
    report.goal("p50 / Celery p50", p50_ratio, 1.5, higher_is_better=False)
    report.goal("p99 / Celery p99", p99_ratio, 2.0, higher_is_better=False)
    report.data = {"chatlane_rounds": lane_rounds, "celery_rounds": base_rounds,
                   "chatlane": lane_m, "celery": base_m}
    report.finish()


if __name__ == "__main__":
    main()
