"""Question 4: what does one turn cost in Redis round trips, worker CPU and memory?

Setup: session data and the Celery broker on two private ``redis-server``s, and a counting
proxy (``benchmarks._proxy``) in front of each, with a separate port for the worker and
for the API, so every command and round trip is attributed to who sent it. (Redis's own
``total_commands_processed`` would not do: it also counts the commands a Lua script runs.)
The data server's ``cmdstat_evalsha`` delta cross-checks the proxy's counts.

chatlane: ONE worker process (threads pool), the API (uvicorn), the instant ``echo``
model (so no streaming flushes). Each round: ``--sessions`` fresh sessions, ``--turns``
waves; a wave POSTs one turn per session (``202``, no ``wait``) and waits until all are
committed, so each session ends with ``2 x --turns`` history messages (20 by default).
Per turn: the worker's and the API's data and broker round trips and commands, the
worker's CPU (``/proc/<pid>/stat`` utime+stime delta / turns), and afterwards
``MEMORY USAGE`` of every key of a session, by kind (history; turn records: the
session's ``turns`` hash and ``turn_index``; its event stream; the rest), with the time to
live left on its keys. A session's one event stream expires ``CHATLANE_EVENTS_TTL_S``
after its last write (an hour by default), long after a round ends; so each sized session
is sized a second time after its event stream is deleted (what expiry leaves behind once
the session goes quiet: the steady-state size).

Baselines, same run: one raw Celery worker (same broker, same pool) running the same
number of no-op tasks in the same waves — its broker round trips and CPU per task; for
memory, the bytes of the history messages themselves (their JSON). Then, in this
process, chatlane's pipeline steps timed one by one without Celery (``benchmarks._stages``)
beside a bare Redis ``PING``. Each figure is the median over rounds.

    .venv/bin/python -m benchmarks.cost [--sessions 50] [--turns 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from dataclasses import dataclass, field
from typing import cast

import redis

from benchmarks._load import celery_batch
from benchmarks._proxy import CountingProxy, RoleCounts
from benchmarks._stages import STAGES, measure_stages, measure_streaming
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
    ratio,
    time_bound,
    wait_until,
)
from benchmarks.celery_baseline import NOOP, verify_ran
from cli.redis_server import ManagedRedis
from shared.keys import SessionKeys
from shared.settings import Settings
from tests.support.cluster import Cluster

ROLES = ("worker", "api")
KINDS = ("history", "turn records", "event stream", "other", "total")
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]  # as XRANGE returns them


@dataclass
class Rig:
    """Everything a round needs: the worker's settings, clients that bypass the proxies,
    the proxies, the API connection and the pids to meter; ``sample_stream`` keeps the
    entries of one sized session's event stream (for the stream-size diagnostic)."""

    settings: Settings
    data: redis.Redis
    broker: redis.Redis
    http: KeepAlive
    data_proxy: CountingProxy
    broker_proxy: CountingProxy
    pids: dict[str, int]
    base_pid: int
    sample_stream: StreamEntries = field(default_factory=list)


def committed(client: redis.Redis, settings: Settings, sessions: list[str], seq: int) -> bool:
    pipe = client.pipeline(transaction=False)
    for session in sessions:
        pipe.hget(
            SessionKeys(settings.key_prefix, settings.default_tenant, session).meta, "done_seq"
        )
    return all(int(v or 0) >= seq for v in pipe.execute())


def session_bytes(client: redis.Redis, keys: SessionKeys) -> dict[str, float]:
    """``MEMORY USAGE`` (exact: ``SAMPLES 0``) of every key of one session, by kind."""
    kinds = dict.fromkeys(KINDS[:-1], 0.0)
    for key in client.scan_iter(match=f"{keys.tag}:*", count=1000):
        name = key.decode()
        size = float(client.memory_usage(key, samples=0) or 0)
        if name == keys.history:
            kinds["history"] += size
        elif name in (keys.turns, keys.turn_index):
            kinds["turn records"] += size
        elif name == keys.events:
            kinds["event stream"] += size
        else:
            kinds["other"] += size
    kinds["total"] = sum(kinds.values())
    docs = client.lrange(keys.history, 0, -1)
    kinds["messages"] = float(len(docs))
    kinds["message JSON"] = float(sum(len(d) for d in docs))
    return kinds


def session_ttls(client: redis.Redis, keys: SessionKeys) -> dict[str, float]:
    """Seconds to live left on a session's history and on its event stream (-2: none)."""
    return {
        "ttl_s history": client.pttl(keys.history) / 1000,
        "ttl_s event stream": client.pttl(keys.events) / 1000,
    }


def drop_event_streams(client: redis.Redis, keys: SessionKeys) -> int:
    """Delete a finished session's event stream, as its expiry would; 1 if there was one."""
    return int(client.delete(keys.events))


def stream_bytes(client: redis.Redis, entries: StreamEntries, node_max_bytes: int) -> int:
    """``MEMORY USAGE`` of a stream holding ``entries`` (a session's events, as read with
    ``XRANGE``) written under ``stream-node-max-bytes``; the server's setting is restored."""
    old = str(client.config_get("stream-node-max-bytes")["stream-node-max-bytes"])
    client.config_set("stream-node-max-bytes", node_max_bytes)
    try:
        client.delete("bench:stream")
        pipe = client.pipeline(transaction=False)
        for _, fields in entries:
            pipe.xadd("bench:stream", fields)  # type: ignore[arg-type]
        pipe.execute()
        return int(client.memory_usage("bench:stream", samples=0) or 0)
    finally:
        client.delete("bench:stream")
        client.config_set("stream-node-max-bytes", old)


def per_item(delta: dict[str, RoleCounts], prefix: str, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for role, counts in delta.items():
        out[f"{prefix}_{role}_rt"] = counts.round_trips / n
        out[f"{prefix}_{role}_cmds"] = counts.total_commands / n
        for name, calls in counts.commands.items():
            out[f"{prefix}_{role}_cmd {name}"] = calls / n
    return out


def diff(after: dict[str, RoleCounts], before: dict[str, RoleCounts]) -> dict[str, RoleCounts]:
    return {role: after[role] - before[role] for role in after}


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def chatlane_round(
    tag: str, sessions_n: int, turns: int, memory_n: int, rig: Rig
) -> dict[str, float]:
    sessions = [f"{tag}-s{i}" for i in range(sessions_n)]
    body = json.dumps({"content": "hello"}).encode()
    data_before, broker_before = rig.data_proxy.snapshot(), rig.broker_proxy.snapshot()
    evalsha_before = evalsha_calls(rig.data)
    meters = {role: CpuMeter([pid]).start() for role, pid in rig.pids.items()}
    for wave in range(1, turns + 1):
        for session in sessions:
            status, raw = rig.http.request("POST", f"/v1/sessions/{session}/turns", body)
            if status != 202:
                raise RuntimeError(f"accept failed: {status} {raw[:200]!r}")
        done = functools.partial(committed, rig.data, rig.settings, sessions, wave)
        wait_until(done, timeout_s=60, interval_s=0.01, what=f"wave {wave}")
    n = sessions_n * turns
    cpu = {f"cpu_ms_{role}": m.stop().cpu_s * 1000 / n for role, m in meters.items()}
    data_delta = diff(rig.data_proxy.snapshot(), data_before)
    broker_delta = diff(rig.broker_proxy.snapshot(), broker_before)
    evalsha = evalsha_calls(rig.data) - evalsha_before
    proxied = sum(
        calls
        for counts in data_delta.values()
        for name, calls in counts.commands.items()
        if name.startswith("EVALSHA")
    )
    if evalsha != proxied:
        raise RuntimeError(f"the proxy saw {proxied} EVALSHA, the data server {evalsha}")
    out = {
        **per_item(data_delta, "data", n),
        **per_item({r: broker_delta[r] for r in ROLES}, "broker", n),
        "server_evalsha": evalsha / n,
        **cpu,
    }
    keys = [SessionKeys(rig.settings.key_prefix, rig.settings.default_tenant, s) for s in sessions]
    sizes = [session_bytes(rig.data, k) for k in keys[:memory_n]]
    for kind in sizes[0]:
        out[f"bytes {kind}"] = float(statistics.median(s[kind] for s in sizes))
    ttls = [session_ttls(rig.data, k) for k in keys[:memory_n]]
    for name in ttls[0]:
        out[name] = float(statistics.median(t[name] for t in ttls))
    rig.sample_stream = cast(StreamEntries, rig.data.xrange(keys[0].events))
    dropped = [drop_event_streams(rig.data, k) for k in keys[:memory_n]]
    out["event streams deleted per session"] = float(statistics.median(dropped))
    expired = [session_bytes(rig.data, k) for k in keys[:memory_n]]
    for kind in KINDS:
        out[f"bytes expired {kind}"] = float(statistics.median(s[kind] for s in expired))
    return out


def wave_args(wave: int, n: int) -> list[int]:
    return [wave, n]


def baseline_round(sessions_n: int, turns: int, rig: Rig) -> dict[str, float]:
    before = rig.broker_proxy.snapshot()
    meter = CpuMeter([rig.base_pid]).start()
    for wave in range(turns):
        celery_batch(
            rig.broker, "baseline", task=NOOP, args=functools.partial(wave_args, wave),
            count=sessions_n, batch=sessions_n, pids={},
        )  # fmt: skip
    n = sessions_n * turns
    cpu_ms = meter.stop().cpu_s * 1000 / n
    delta = diff(rig.broker_proxy.snapshot(), before)
    return {**per_item({"worker": delta["baseline"]}, "broker", n), "cpu_ms_worker": cpu_ms}


def cmd_breakdown(m: dict[str, float], prefix: str) -> str:
    parts = [
        (k.split("_cmd ", 1)[1], v)
        for k, v in m.items()
        if k.startswith(prefix + "_cmd ") and v >= 0.005
    ]
    return ", ".join(f"{name} {v:.2f}" for name, v in sorted(parts, key=lambda p: -p[1]))


def medians_union(rounds: list[dict[str, float]]) -> dict[str, float]:
    """``medians`` over rounds whose keys may differ (a command absent in a round is 0)."""
    keys = sorted({k for r in rounds for k in r})
    return medians([{k: r.get(k, 0.0) for k in keys} for r in rounds])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50, help="sessions per round")
    parser.add_argument("--turns", type=int, default=10, help="turns per session per round")
    parser.add_argument("--concurrency", type=int, default=16, help="pool threads (both)")
    parser.add_argument(
        "--memory-sessions", type=int, default=5, help="sessions sized with MEMORY USAGE per round"
    )
    parser.add_argument(
        "--stage-turns", type=int, default=500, help="turns per round of the in-process breakdown"
    )
    add_common_args(parser, max_s=300)
    args = parser.parse_args(argv)
    report = Report("cost", vars(args))

    with (
        time_bound(args.max_seconds),
        ManagedRedis() as data_server,
        ManagedRedis() as broker_server,
        CountingProxy(data_server.port, list(ROLES)) as data_proxy,
        CountingProxy(broker_server.port, [*ROLES, "baseline"]) as broker_proxy,
    ):

        def role_settings(role: str, queue: str = "chatlane") -> Settings:
            data_url = data_proxy.url(role) if role in ROLES else data_server.url
            return Settings(redis_url=data_url, broker_url=broker_proxy.url(role), queue=queue)

        settings = role_settings("worker")
        pool = {"workers": 1, "concurrency": args.concurrency}
        with (
            Cluster(settings, logs_dir("cost/worker"), api=False, **pool) as lane,
            Cluster(role_settings("api"), logs_dir("cost/api"), workers=0) as api,
            BaselineCluster(
                role_settings("baseline", "baseline"), logs_dir("cost/baseline"), **pool
            ) as base,
        ):
            assert api.api is not None
            rig = Rig(
                settings=settings,
                data=redis.Redis.from_url(data_server.url),
                broker=redis.Redis.from_url(broker_server.url),
                http=KeepAlive(api.port),
                data_proxy=data_proxy,
                broker_proxy=broker_proxy,
                pids={"worker": lane.worker_procs[0].pid, "api": api.api.pid},
                base_pid=base.worker_procs[0].pid,
            )
            log("warming up")
            chatlane_round("warm", args.sessions, 1, 1, rig)
            baseline_round(args.sessions, 1, rig)
            lane_rounds, base_rounds = [], []
            with Profiler("cost", rig.pids, enabled=args.profile) as profiler:
                for r in range(args.rounds):
                    log(f"round {r + 1}/{args.rounds}")
                    row = chatlane_round(
                        f"r{r}", args.sessions, args.turns, args.memory_sessions, rig
                    )
                    lane_rounds.append(row)
                    base_rounds.append(baseline_round(args.sessions, args.turns, rig))
                    log(
                        f"chatlane worker: {row['data_worker_rt']:.2f} data RT/turn, "
                        f"{row['cpu_ms_worker']:.2f} ms CPU/turn; "
                        f"Celery no-op: {base_rounds[-1]['cpu_ms_worker']:.2f} ms CPU/task"
                    )
            rig.http.close()
            rig.data.close()
            rig.broker.close()
            sent = (args.rounds * args.turns + 1) * args.sessions
            ran = verify_ran(role_settings("baseline", "baseline"), NOOP, sent)
        log("in-process breakdown of the turn pipeline")
        stage_rounds = [
            measure_stages(data_server.url, turns=args.stage_turns, sessions=50, tag=str(r))
            for r in range(args.rounds)
        ]
        streaming = [measure_streaming(200, 10) for _ in range(args.rounds)]
        data = redis.Redis.from_url(data_server.url)
        node_sizes = {n: stream_bytes(data, rig.sample_stream, n) for n in (4096, 512, 256)}
        data.close()

    lane_m, base_m = medians_union(lane_rounds), medians_union(base_rounds)
    stages = medians(stage_rounds)
    n = args.sessions * args.turns
    worker_rt = lane_m["data_worker_rt"] + lane_m["broker_worker_rt"]
    report.table(
        f"Round trips and CPU per turn / per no-op task ({n} per round, 1 worker x "
        f"{args.concurrency} threads, median of {args.rounds} rounds)",
        ["", "data RT", "broker RT", "total RT", "data cmds", "broker cmds", "CPU ms"],
        [
            ["chatlane worker", lane_m["data_worker_rt"], lane_m["broker_worker_rt"], worker_rt,
             lane_m["data_worker_cmds"], lane_m["broker_worker_cmds"], lane_m["cpu_ms_worker"]],
            ["chatlane API (POST, no wait)", lane_m["data_api_rt"], lane_m["broker_api_rt"],
             lane_m["data_api_rt"] + lane_m["broker_api_rt"], lane_m["data_api_cmds"],
             lane_m["broker_api_cmds"], lane_m["cpu_ms_api"]],
            ["Celery no-op worker", 0.0, base_m["broker_worker_rt"], base_m["broker_worker_rt"],
             0.0, base_m["broker_worker_cmds"], base_m["cpu_ms_worker"]],
            ["ratio chatlane worker / Celery", "",
             ratio(lane_m["broker_worker_rt"], base_m["broker_worker_rt"]),
             ratio(worker_rt, base_m["broker_worker_rt"]), "",
             ratio(lane_m["broker_worker_cmds"], base_m["broker_worker_cmds"]),
             ratio(lane_m["cpu_ms_worker"], base_m["cpu_ms_worker"])],
        ],
    )  # fmt: skip
    report.table(
        "Commands per turn, by sender and server (EVALSHA split by script)",
        ["sender", "server", "commands per turn"],
        [
            ["chatlane worker", "data", cmd_breakdown(lane_m, "data_worker")],
            ["chatlane worker", "broker", cmd_breakdown(lane_m, "broker_worker")],
            ["chatlane API", "data", cmd_breakdown(lane_m, "data_api")],
            ["chatlane API", "broker", cmd_breakdown(lane_m, "broker_api")],
            ["Celery no-op worker", "broker", cmd_breakdown(base_m, "broker_worker")],
        ],
    )
    report.table(
        f"Bytes per session at {lane_m['bytes messages']:.0f} messages (MEMORY USAGE, median "
        f"of {args.memory_sessions} sessions per round, median of {args.rounds} rounds)",
        ["", *KINDS, "message JSON (baseline)", "total / message JSON"],
        [
            ["chatlane session, right after its last turn", *(lane_m[f"bytes {k}"] for k in KINDS),
             lane_m["bytes message JSON"],
             ratio(lane_m["bytes total"], lane_m["bytes message JSON"])],
            [f"same sessions, their event stream deleted "
             f"({lane_m['event streams deleted per session']:.0f} per session, as "
             "CHATLANE_EVENTS_TTL_S after its last write)",
             *(lane_m[f"bytes expired {k}"] for k in KINDS), lane_m["bytes message JSON"],
             ratio(lane_m["bytes expired total"], lane_m["bytes message JSON"])],
        ],
    )  # fmt: skip
    report.table(
        "Time to live left at that measurement (s, median of rounds)",
        ["", "history", "event stream"],
        [["chatlane session", lane_m["ttl_s history"], lane_m["ttl_s event stream"]]],
    )
    report.table(
        f"chatlane's own steps, in process, no Celery: thread CPU ms per call "
        f"({args.stage_turns} turns per round, median of {args.rounds} rounds)",
        [*STAGES, "begin + run_turn + commit", "... / PING"],
        [
            [*(stages[s] for s in STAGES),
             stages["begin"] + stages["run_turn"] + stages["commit"],
             ratio(stages["begin"] + stages["run_turn"] + stages["commit"], stages["ping"])],
        ],
    )  # fmt: skip
    stream = medians(streaming)
    report.table(
        "Streaming and stream memory (diagnostics)",
        ["", "value"],
        [
            [f"call_model, echo reply of {stream['tokens']:.0f} tokens: CPU ms", stream["ms"]],
            ["... per token: CPU us", stream["us_per_token"]],
            *[[f"a session's event stream ({len(rig.sample_stream)} entries), "
               f"stream-node-max-bytes {n}: bytes", float(b)] for n, b in node_sizes.items()],
        ],
    )  # fmt: skip
    report.goal(
        "worker data round trips per turn", lane_m["data_worker_rt"], 3.0, higher_is_better=False
    )
    report.goal("worker CPU ms per turn", lane_m["cpu_ms_worker"], 3.0, higher_is_better=False)
    report.data = {
        "chatlane_rounds": lane_rounds,
        "celery_rounds": base_rounds,
        "stage_rounds": stage_rounds,
        "chatlane": lane_m,
        "celery": base_m,
        "stages": stages,
        "streaming": streaming,
        "stream_bytes_by_node_max_bytes": node_sizes,
        "verified": {"celery_noops_run": ran},
        "profiles": profiler.summaries,
    }
    report.finish()


if __name__ == "__main__":
    main()
