"""Question 5: how many turns per second does one uvicorn worker process accept?

chatlane: ONE ``uvicorn api.main:app`` process (started by ``tests.support.cluster``) on
a private ``redis-server``, no Celery worker: every accepted turn stays queued and its
wake-up piles up on the broker list, which is what an accept costs. ``wrk`` drives it
with ``benchmarks/accept.lua``: ``POST {"content":"hello"}`` to
``/v1/sessions/<id>/turns`` with ids spread over ``--sessions`` sessions per wrk thread.
The turns Redis actually accepted (``next_seq`` summed over the run's sessions) are
checked against wrk's response count.

Baseline, same run, same process: ``wrk`` on ``GET /healthz`` (FastAPI routing,
middleware and JSON, no Redis). Runs alternate; each figure is the median over rounds.
``API cores`` is the uvicorn process's CPU seconds per wall second; ``per API core``
divides the rate by it: what a fully busy process would reach on this (shared) machine.

    .venv/bin/python -m benchmarks.api_accept [--duration 5] [--connections 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess

import redis

from benchmarks._support import (
    BENCH_DIR,
    CpuMeter,
    Profiler,
    Report,
    add_common_args,
    log,
    logs_dir,
    medians,
    ratio,
    redis_pid,
    time_bound,
)
from cli.redis_server import ManagedRedis
from shared.keys import GlobalKeys, SessionKeys, parse_member
from shared.settings import Settings
from tests.support.cluster import Cluster

SCRIPT = BENCH_DIR / "accept.lua"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
COLUMNS = [
    ("requests/s", "per_s"),
    ("per API core", "per_api_core"),
    ("API cores", "cores_api"),
    ("API CPU ms/req", "cpu_ms_api"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("responses", "requests"),
    ("non-2xx", "non_2xx"),
]


def _search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.M)
    if match is None:
        raise RuntimeError(f"unexpected wrk output (no {pattern!r}):\n{text}")
    return match


def parse_wrk(out: str) -> dict[str, float]:
    """Responses, rate, latency percentiles (ms) and errors from ``wrk --latency`` output."""
    got: dict[str, float] = {}
    for pct in ("50", "90", "99"):
        value, unit = _search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)$", out).groups()
        got[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    got["requests"] = float(_search(r"(\d+) requests in ", out).group(1))
    got["per_s"] = float(_search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    got["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    got["socket_errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    return got


def run_wrk(
    url: str, args: argparse.Namespace, duration: int, pids: dict[str, int], *script_args: str
) -> dict[str, float]:
    """``wrk`` against ``url`` (with ``accept.lua`` when ``script_args`` are given)."""
    cmd = [args.wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency"]
    cmd += ["-s", str(SCRIPT), url, "--", *script_args] if script_args else [url]
    meters = {role: CpuMeter([pid]).start() for role, pid in pids.items()}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True)
    row = parse_wrk(done.stdout)
    for role, meter in meters.items():
        meter.stop()
        row[f"cores_{role}"] = meter.cpu_s / meter.wall_s
        row[f"cpu_ms_{role}"] = meter.cpu_s * 1000 / max(row["requests"], 1)
    row["per_api_core"] = ratio(row["per_s"], row["cores_api"])
    return row


def accepted_in_redis(client: redis.Redis, settings: Settings, prefix: str) -> int:
    """Turns Redis gave a sequence number in this run's sessions (``next_seq`` summed)."""
    total = 0
    index = GlobalKeys(settings.key_prefix).active
    for member, _ in client.zscan_iter(index, match=f"*:{prefix}-*", count=1000):
        tenant, session = parse_member(member.decode())
        meta = SessionKeys(settings.key_prefix, tenant, session).meta
        total += int(client.hget(meta, "next_seq") or 0)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--sessions", type=int, default=5000, help="sessions per wrk thread")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    add_common_args(parser, rounds=5, max_s=240)
    args = parser.parse_args(argv)
    report = Report("api_accept", vars(args))

    with time_bound(args.max_seconds), ManagedRedis() as server:
        settings = Settings(redis_url=server.url, queue="chatlane")
        with Cluster(settings, logs_dir("api_accept"), workers=0) as api:
            assert api.api is not None
            client = redis.Redis.from_url(server.url)
            pids = {"api": api.api.pid, "redis": redis_pid(client)}
            health = f"{api.base_url}/healthz"
            log("warming up")
            run_wrk(api.base_url, args, 1, pids, str(args.sessions), "warm")
            run_wrk(health, args, 1, pids)
            lane_rounds, base_rounds = [], []
            with Profiler("api_accept", {"api": api.api.pid}, enabled=args.profile) as profiler:
                for r in range(args.rounds):
                    log(f"round {r + 1}/{args.rounds}")
                    tag = f"r{r}"
                    row = run_wrk(api.base_url, args, args.duration, pids, str(args.sessions), tag)
                    row["accepted_in_redis"] = float(accepted_in_redis(client, settings, tag))
                    lane_rounds.append(row)
                    base_rounds.append(run_wrk(health, args, args.duration, pids))
                    log(
                        f"accept {row['per_s']:.0f}/s, {row['accepted_in_redis']:.0f} turns in "
                        f"Redis for {row['requests']:.0f} responses; "
                        f"healthz {base_rounds[-1]['per_s']:.0f}/s"
                    )
            client.close()

    lane_m, base_m = medians(lane_rounds), medians(base_rounds)
    rows = [["POST /v1/sessions/{id}/turns (202)", *(lane_m[k] for _, k in COLUMNS)]]
    rows += [["GET /healthz", *(base_m[k] for _, k in COLUMNS)]]
    rows += [["ratio accept / healthz", *(ratio(lane_m[k], base_m[k]) for _, k in COLUMNS[:6])]]
    report.table(
        f"1 uvicorn process, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"median of {args.rounds} rounds (Redis CPU per accept: {lane_m['cpu_ms_redis']:.2f} ms; "
        f"turns found in Redis per round: {lane_m['accepted_in_redis']:.0f})",
        ["", *(h for h, _ in COLUMNS)],
        rows,
    )
    report.goal(
        "accepted turns/s per uvicorn process", lane_m["per_s"], 450.0, higher_is_better=True
    )
    report.data = {
        "accept_rounds": lane_rounds,
        "healthz_rounds": base_rounds,
        "accept": lane_m,
        "healthz": base_m,
        "profiles": profiler.summaries,
    }
    report.finish()


if __name__ == "__main__":
    main()
