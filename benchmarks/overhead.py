"""Question 1: what does chatlane add to a Celery round trip?

chatlane: ``POST /v1/sessions/<id>/turns?wait=10`` with the instant ``echo`` model; the
request answers ``200`` with the completed turn, so its latency is HTTP accept -> queue ->
worker -> commit -> the API noticing the final event -> response. Sequential by default
(``--clients 1``), on raw keep-alive ``http.client`` connections, rotating over
``--sessions`` sessions. One worker process (``--concurrency`` threads) and one API process.

Baseline, same run, same Redis (broker and result backend), same Celery configuration
and pool size: ``bench.ping.delay().get()`` from a Celery client in this process —
publish, a worker runs a task returning ``"pong"``, the result comes back through the
Redis result backend. That is the request -> result round trip a Celery user writes,
the closest analogue of ``?wait``. Rounds alternate chatlane / Celery; every figure is
the median over rounds of that figure.

The turn's own timestamps (ms resolution, averaged over the round) split chatlane's
latency: client send -> ``created_at`` (HTTP + routing), -> ``started_at`` (accept
pipeline, wake-up, Celery delivery, the hand-off to the worker's event loop,
``begin.lua``), -> ``finished_at`` (model + prompt), -> response read (``commit.lua``,
its final event reaching the API's event hub over pub/sub, the response).

    .venv/bin/python -m benchmarks.overhead [--turns 2000] [--rounds 3] [--clients 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable

import redis

from benchmarks._support import (
    BaselineCluster,
    CpuMeter,
    KeepAlive,
    Profiler,
    Report,
    add_common_args,
    log,
    logs_dir,
    medians,
    percentile,
    ratio,
    redis_pid,
    time_bound,
)
from benchmarks.celery_baseline import PING, create_baseline, verify_ran
from cli.redis_server import ManagedRedis
from shared.settings import Settings
from tests.support.cluster import Cluster

Op = Callable[[int], None]
MakeClient = Callable[[int], tuple[Op, Callable[[], None]]]
SEGMENTS = ("http_in", "to_started", "model", "to_response")


def run_clients(make: MakeClient, clients: int, turns: int) -> tuple[list[float], float]:
    """``turns`` operations split over ``clients`` threads; latencies (s) and wall time (s)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        op, close = make(index)
        try:
            for n in range(turns // clients):
                t0 = time.perf_counter()
                op(n)
                latencies[index].append(time.perf_counter() - t0)
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
    if errors:
        raise errors[0]
    return [x for xs in latencies for x in xs], time.perf_counter() - start


def chatlane_client(
    port: int, tag: str, sessions: int, clients: int
) -> tuple[MakeClient, dict[str, list[float]]]:
    """POST ``?wait=10`` turns; also collects the latency segments of every turn (ms)."""
    body = json.dumps({"content": "hello"}).encode()
    segments: dict[str, list[float]] = {s: [] for s in SEGMENTS}
    guard = threading.Lock()

    def make(index: int) -> tuple[Op, Callable[[], None]]:
        http = KeepAlive(port)
        mine = [f"{tag}-c{index}-s{s}" for s in range(max(1, sessions // clients))]
        raw_turns: list[tuple[float, float, bytes]] = []

        def op(n: int) -> None:
            sent = time.time()
            status, raw = http.request(
                "POST", f"/v1/sessions/{mine[n % len(mine)]}/turns?wait=10", body
            )
            if status != 200 or b'"status":"completed"' not in raw:
                raise RuntimeError(f"turn not completed: {status} {raw[:300]!r}")
            raw_turns.append((sent, time.time(), raw))

        def close() -> None:
            http.close()
            with guard:
                for sent, got, raw in raw_turns:
                    turn = json.loads(raw)
                    created, started, finished = (
                        dt.datetime.fromisoformat(turn[k]).timestamp()
                        for k in ("created_at", "started_at", "finished_at")
                    )
                    for name, (a, b) in zip(
                        SEGMENTS,
                        [(sent, created), (created, started), (started, finished), (finished, got)],
                        strict=True,
                    ):
                        segments[name].append((b - a) * 1000)

        return op, close

    return make, segments


def celery_client(settings: Settings) -> MakeClient:
    def make(index: int) -> tuple[Op, Callable[[], None]]:
        app = create_baseline(settings)  # one client app per thread: no shared result consumer
        ping = app.signature(PING)

        def op(n: int) -> None:
            if ping.delay().get(timeout=10) != "pong":
                raise RuntimeError("bench.ping returned something else")

        return op, app.close

    return make


def measure(
    name: str, make: MakeClient, args: argparse.Namespace, pids: dict[str, int]
) -> dict[str, float]:
    meters = {role: CpuMeter([pid]).start() for role, pid in pids.items()}
    latencies, wall = run_clients(make, args.clients, args.turns)
    ms = [x * 1000 for x in latencies]
    row = {
        "n": float(len(ms)),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms),
        "per_s": len(ms) / wall,
    }
    for role, meter in meters.items():
        row[f"cpu_ms_{role}"] = meter.stop().cpu_s * 1000 / len(ms)
    log(f"{name}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms ({row['per_s']:.0f}/s)")
    return row


def cpu_cells(m: dict[str, float], roles: list[str]) -> list[float]:
    cells = [m[f"cpu_ms_{r}"] for r in roles]
    return [*cells, sum(cells)]


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
        lane_logs, base_logs = logs_dir("overhead/chatlane"), logs_dir("overhead/baseline")
        with (
            Cluster(settings, lane_logs, workers=1, concurrency=args.concurrency) as lane,
            BaselineCluster(
                base_settings, base_logs, workers=1, concurrency=args.concurrency
            ) as base,
        ):
            assert lane.api is not None
            data = redis.Redis.from_url(server.url)
            shared_pids = {"redis": redis_pid(data), "client": os.getpid()}
            data.close()
            lane_pids = {"api": lane.api.pid, "worker": lane.worker_procs[0].pid}
            base_pids = {"worker": base.worker_procs[0].pid}
            log("warming up")
            run_clients(
                chatlane_client(lane.port, "warm", args.sessions, args.clients)[0],
                args.clients,
                args.warmup,
            )
            run_clients(celery_client(base_settings), args.clients, args.warmup)
            lane_rounds, base_rounds = [], []
            with Profiler("overhead", lane_pids, enabled=args.profile) as profiler:
                for r in range(args.rounds):
                    log(f"round {r + 1}/{args.rounds}")
                    make, segments = chatlane_client(
                        lane.port, f"r{r}", args.sessions, args.clients
                    )
                    row = measure("chatlane", make, args, {**lane_pids, **shared_pids})
                    row.update({f"seg_{k}": sum(v) / len(v) for k, v in segments.items()})
                    lane_rounds.append(row)
                    base_rounds.append(
                        measure(
                            "celery  ",
                            celery_client(base_settings),
                            args,
                            {**base_pids, **shared_pids},
                        )
                    )
            per_client = args.warmup // args.clients + args.rounds * (args.turns // args.clients)
            pings = verify_ran(base_settings, PING, per_client * args.clients)

    lane_m, base_m = medians(lane_rounds), medians(base_rounds)
    cols = ["p50_ms", "p90_ms", "p99_ms", "mean_ms", "per_s"]
    report.table(
        f"Latency, {args.turns} per round, {args.clients} client(s), "
        f"median of {args.rounds} rounds",
        ["", "p50 ms", "p90 ms", "p99 ms", "mean ms", "per s"],
        [
            ["chatlane POST ?wait=10 (echo)", *(lane_m[c] for c in cols)],
            ["Celery .delay().get() no-op", *(base_m[c] for c in cols)],
            ["ratio chatlane / Celery", *(ratio(lane_m[c], base_m[c]) for c in cols)],
        ],
    )
    roles = ["api", "worker", "redis", "client"]
    report.table(
        "CPU per round trip (ms) by process, median of rounds",
        ["", *roles, "total"],
        [
            ["chatlane", *cpu_cells(lane_m, roles)],
            ["Celery", "", *cpu_cells(base_m, roles[1:])],
        ],
    )
    report.table(
        "Where chatlane's latency goes (mean ms per turn, from the turn's timestamps)",
        ["send -> created_at", "-> started_at", "-> finished_at", "-> response read", "sum"],
        [[*(lane_m[f"seg_{s}"] for s in SEGMENTS), sum(lane_m[f"seg_{s}"] for s in SEGMENTS)]],
    )
    report.goal(
        "p50 / Celery p50", ratio(lane_m["p50_ms"], base_m["p50_ms"]), 1.5, higher_is_better=False
    )
    report.goal(
        "p99 / Celery p99", ratio(lane_m["p99_ms"], base_m["p99_ms"]), 2.0, higher_is_better=False
    )
    report.data = {
        "chatlane_rounds": lane_rounds,
        "celery_rounds": base_rounds,
        "chatlane": lane_m,
        "celery": base_m,
        "verified": {"celery_pings_run": pings},
        "profiles": profiler.summaries,
    }
    report.finish()


if __name__ == "__main__":
    main()
