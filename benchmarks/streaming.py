"""Question 6: can one worker process hold 1,000 real streaming turns at once, cheaply?

Setup: a loopback OpenAI-compatible server (``tests.support.streaming_server``, asyncio,
in a process of its own, its CPU metered) streams ``--tokens`` tokens ``--interval`` s
apart for every request, with HTTP/1.1 chunked SSE as the real API does. chatlane: ONE
worker process, ``CHATLANE_WORKER_CONCURRENCY=--turns``, ``CHATLANE_MODEL=openai:…``
(the fast streaming client), deltas batched every ``--flush`` s. Each round enqueues
``--turns`` turns, one per fresh session, as the API does (``benchmarks._load``), and
ends when every turn record says ``completed``.

Floor, same run, rounds alternating: a bare aiohttp + orjson loop reading ``--turns``
streams from the same server in a process of its own (``benchmarks._floor``).

Per round: worker CPU per streamed token (beside the floor's), streams open at once (the
server's own count), completed turns/s against the ideal (turns / reply time), accept →
completed latency against the model's own reply time, worker memory per turn in flight
(peak RSS over idle RSS), Redis commands and Redis CPU per token (``INFO``), and the time
to token: ``--probes`` of the turns ask the server to stamp every token with its send
time, and this process, subscribed to those sessions' channels as the API's event hub is,
notes when each token's delta arrives.

    .venv/bin/python -m benchmarks.streaming [--turns 1000] [--tokens 200] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.request

import orjson
import redis

from benchmarks._load import Enqueuer, completed
from benchmarks._support import (
    CpuMeter,
    Report,
    add_common_args,
    log,
    logs_dir,
    medians,
    memory_kib,
    percentile,
    ratio,
    redis_pid,
    time_bound,
    wait_until,
)
from cli.redis_server import ManagedRedis
from cli.supervise import stop_all
from shared.settings import Settings
from shared.store import Turn
from tests.support.cluster import Cluster


class Stub:
    """The streaming server, in a process of its own."""

    def __init__(self, tokens: int, interval: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.streaming_server", "--port", "0",
             "--tokens", str(tokens), "--interval", str(interval)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
            stats: dict[str, int] = json.loads(r.read())
            return stats


class Sampler:
    """Every 100 ms: the worker's RSS and the server's open streams; keeps the maxima."""

    def __init__(self, worker_pid: int, stub: Stub) -> None:
        self._pid, self._stub = worker_pid, stub
        self._stop = threading.Event()
        self.rss_kib = 0
        self.open_streams = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.rss_kib = max(self.rss_kib, memory_kib(self._pid)["VmRSS"])
            self.open_streams = max(self.open_streams, self._stub.stats()["open_streams"])

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Probe:
    """Subscribed to the probe sessions' channels: when each stamped token arrived."""

    def __init__(self, url: str, channels: list[str]) -> None:
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(*channels)
        self.delays_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            now_ms = time.time() * 1000
            _id, _turn, kind, data = message["data"].split(b" ", 3)
            if kind != b"delta":
                continue
            for word in orjson.loads(data)["text"].split():
                if "@" in word:
                    self.delays_ms.append(now_ms - int(word.split("@")[1]))

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pubsub.close()
        self._client.close()


def redis_counts(client: redis.Redis) -> tuple[int, int]:
    """Commands processed (scripts' inner commands included) and EVALSHA calls so far."""
    total = int(client.info("stats")["total_commands_processed"])
    evalsha = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    return total, int(evalsha)


def floor_round(stub: Stub, streams: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks._floor", "--url",
         f"{stub.base_url}/chat/completions", "--streams", str(streams)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout)
    result["cpu_us_per_token"] = result["cpu_s"] * 1e6 / result["tokens"]
    return result


def chatlane_round(
    args: argparse.Namespace,
    settings: Settings,
    client: redis.Redis,
    stub: Stub,
    pids: dict[str, int],
    tag: str,
) -> dict[str, float]:
    sessions = [f"{tag}-s{i}" for i in range(args.turns)]
    probes = set(sessions[: args.probes])
    channels = [f"{settings.key_prefix}:{{{settings.default_tenant}:{s}}}:notify" for s in probes]
    idle_kib = memory_kib(pids["worker"])["VmRSS"]
    before_stub, before_redis = stub.stats(), redis_counts(client)
    with (
        Enqueuer(settings, connections=args.batch) as enqueuer,
        Probe(settings.redis_url, channels) as probe,
        Sampler(pids["worker"], stub) as sampler,
    ):
        meters = {role: CpuMeter([pid]).start() for role, pid in pids.items()}
        start = time.time()
        accepted, _ = enqueuer.enqueue_turns(
            sessions, 1, args.batch, content_of=lambda s: "stamp" if s in probes else "hello"
        )
        wait_until(
            lambda: completed(client, accepted)[0] == len(accepted),
            timeout_s=args.max_seconds,
            interval_s=0.25,
            what="every turn",
        )
        end = time.time()
        for meter in meters.values():
            meter.stop()
    after_stub, after_redis = stub.stats(), redis_counts(client)
    tokens = after_stub["tokens_sent"] - before_stub["tokens_sent"]
    latencies, starts = [], []
    failed = 0
    for keys, turn_id in accepted:
        turn = Turn.from_json(client.hget(keys.turns, turn_id))  # type: ignore[arg-type]
        failed += turn.status != "completed"
        assert turn.finished_at is not None and turn.started_at is not None
        latencies.append((turn.finished_at - turn.created_at).total_seconds())
        starts.append((turn.started_at - turn.created_at).total_seconds())
    model_s = args.first + args.tokens * args.interval
    in_flight = max(sampler.open_streams, 1)
    return {
        "turns": float(len(accepted)),
        "failed": float(failed),
        "tokens": float(tokens),
        "seconds": end - start,
        "per_s": len(accepted) / (end - start),
        "ideal_per_s": args.turns / model_s,
        "open_streams_max": float(sampler.open_streams),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "latency_p99_over_model": percentile(latencies, 99) / model_s,
        "start_p50_s": percentile(starts, 50),
        "start_p99_s": percentile(starts, 99),
        "cpu_us_per_token": meters["worker"].cpu_s * 1e6 / tokens,
        "stub_cpu_us_per_token": meters["stub"].cpu_s * 1e6 / tokens,
        "redis_cpu_us_per_token": meters["redis"].cpu_s * 1e6 / tokens,
        "redis_cmds_per_token": (after_redis[0] - before_redis[0]) / tokens,
        "evalsha_per_token": (after_redis[1] - before_redis[1]) / tokens,
        "kib_per_in_flight": (sampler.rss_kib - idle_kib) / in_flight,
        "worker_rss_peak_mib": sampler.rss_kib / 1024,
        "token_delay_p50_ms": percentile(probe.delays_ms, 50),
        "token_delay_p99_ms": percentile(probe.delays_ms, 99),
        "probed_tokens": float(len(probe.delays_ms)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1000, help="turns at once (= capacity)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between tokens")
    parser.add_argument("--first", type=float, default=0.0, help="(the stub sends at once)")
    parser.add_argument("--flush", type=float, default=0.05, help="CHATLANE_STREAM_FLUSH_S")
    parser.add_argument("--probes", type=int, default=50, help="turns whose tokens are timed")
    parser.add_argument("--batch", type=int, default=100, help="submissions at a time")
    add_common_args(parser, max_s=900)
    args = parser.parse_args(argv)
    report = Report("streaming", vars(args))

    stub = Stub(args.tokens, args.interval)
    try:
        with time_bound(args.max_seconds), ManagedRedis() as server:
            settings = Settings(
                redis_url=server.url, queue="chatlane", model="openai:stub",
                openai_base_url=stub.base_url, openai_api_key="bench",
                stream_flush_s=args.flush, worker_concurrency=args.turns,
                model_timeout_s=60, turn_deadline_s=600, lock_ttl_s=30,
            )  # fmt: skip
            with Cluster(
                settings, logs_dir("streaming/chatlane"), workers=1, concurrency=args.turns,
                api=False,
            ) as lane:  # fmt: skip
                client = redis.Redis.from_url(server.url)
                pids = {
                    "worker": lane.worker_procs[0].pid,
                    "redis": redis_pid(client),
                    "stub": stub.proc.pid,
                }
                lane_rounds: list[dict[str, float]] = []
                floor_rounds: list[dict[str, float]] = []
                for r in range(args.rounds):
                    log(f"round {r + 1}/{args.rounds}")
                    floor_rounds.append(floor_round(stub, args.turns))
                    log(f"floor   : {floor_rounds[-1]['cpu_us_per_token']:.1f} us/token")
                    lane_rounds.append(chatlane_round(args, settings, client, stub, pids, f"r{r}"))
                    log(
                        f"chatlane: {lane_rounds[-1]['cpu_us_per_token']:.1f} us/token, "
                        f"{lane_rounds[-1]['per_s']:.1f} turns/s"
                    )
                client.close()
    finally:
        stop_all([stub.proc])

    lane_m, floor_m = medians(lane_rounds), medians(floor_rounds)
    model_s = args.first + args.tokens * args.interval
    report.table(
        f"{args.turns} turns at once, {args.tokens} tokens {args.interval:g} s apart "
        f"({model_s:g} s per reply), 1 worker process, deltas every {args.flush:g} s, "
        f"median of {args.rounds} rounds",
        ["", "CPU us/token", "streams open at once", "turns/s", "of ideal",
         "p50 s", "p99 s", "p99 / model", "KiB per turn in flight", "failed"],
        [
            ["chatlane worker", lane_m["cpu_us_per_token"], lane_m["open_streams_max"],
             lane_m["per_s"], lane_m["per_s"] / lane_m["ideal_per_s"], lane_m["latency_p50_s"],
             lane_m["latency_p99_s"], lane_m["latency_p99_over_model"],
             lane_m["kib_per_in_flight"], lane_m["failed"]],
            ["floor: aiohttp + orjson loop", floor_m["cpu_us_per_token"], args.turns, "", "",
             "", "", "", "", ""],
            ["ratio chatlane / floor",
             ratio(lane_m["cpu_us_per_token"], floor_m["cpu_us_per_token"]),
             "", "", "", "", "", "", "", ""],
        ],
    )  # fmt: skip
    report.table(
        "Redis, the stub server, and the time to token (median of rounds)",
        ["Redis commands / token", "of which EVALSHA / token", "Redis CPU us/token",
         "stub server CPU us/token", "token -> event p50 ms", "token -> event p99 ms",
         "tokens probed", "accept -> started p50 s", "p99 s"],
        [[lane_m["redis_cmds_per_token"], lane_m["evalsha_per_token"],
          lane_m["redis_cpu_us_per_token"], lane_m["stub_cpu_us_per_token"],
          lane_m["token_delay_p50_ms"], lane_m["token_delay_p99_ms"],
          lane_m["probed_tokens"], lane_m["start_p50_s"], lane_m["start_p99_s"]]],
    )  # fmt: skip
    report.goal(
        "CPU per token / floor",
        ratio(lane_m["cpu_us_per_token"], floor_m["cpu_us_per_token"]),
        2.0,
        higher_is_better=False,
    )
    report.goal(
        "streams open at once", lane_m["open_streams_max"], args.turns * 0.95, higher_is_better=True
    )
    report.goal(
        "turns/s / ideal", lane_m["per_s"] / lane_m["ideal_per_s"], 0.9, higher_is_better=True
    )
    report.goal(
        "p99 accept -> completed / model",
        lane_m["latency_p99_over_model"],
        1.15,
        higher_is_better=False,
    )
    report.goal("KiB per turn in flight", lane_m["kib_per_in_flight"], 64.0, higher_is_better=False)
    report.goal(
        "token -> event p99 ms",
        lane_m["token_delay_p99_ms"],
        args.flush * 1000 + 5,
        higher_is_better=False,
    )
    report.data = {
        "chatlane_rounds": lane_rounds,
        "floor_rounds": floor_rounds,
        "chatlane": lane_m,
        "floor": floor_m,
    }
    report.finish()


if __name__ == "__main__":
    main()
