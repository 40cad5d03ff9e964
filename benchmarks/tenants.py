"""Question: does a tenant flooding the API slow another tenant down?

One API process and one worker process; the model is the loopback OpenAI-compatible
streaming server (``--tokens`` tokens, ``--interval`` s apart), in a process of its own.
A quiet tenant sends sequential ``POST …/turns?wait=30`` turns and measures each until
completed. Rounds alternate between the quiet tenant alone (the baseline) and the quiet
tenant while a noisy tenant floods ``POST …/turns`` at ``--flood-rate`` requests/s from
``--flood-threads`` threads, far over its budget of ``--rpm`` requests per minute, so
nearly all of its requests are refused with ``429``.
Each tenant has its own API key; budgets are per tenant.

    .venv/bin/python -m benchmarks.tenants [--turns 200] [--rounds 3] [--flood-rate 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from collections import Counter

from benchmarks._support import (
    Report,
    add_common_args,
    log,
    logs_dir,
    medians,
    percentile,
    ratio,
    time_bound,
)
from benchmarks.streaming import Stub
from cli.redis_server import ManagedRedis
from shared.apikeys import KeyRing, with_ring
from shared.settings import Settings
from tests.support.cluster import Cluster


def make_keys(settings: Settings, tenants: list[str]) -> dict[str, str]:
    async def make(ring: KeyRing) -> dict[str, str]:
        return {t: (await ring.create(t, "benchmark"))[1] for t in tenants}

    return with_ring(settings.redis_url, settings.key_prefix, make)


class Caller:
    """One keep-alive connection acting for one tenant."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def quiet_turns(port: int, key: str, turns: int, tag: str) -> list[float]:
    """Latencies (ms) of ``turns`` sequential turns answered with ``?wait=30``."""
    caller = Caller(port, key)
    latencies = []
    try:
        for n in range(turns):
            body = json.dumps({"content": f"quiet turn {n}"}).encode()
            t0 = time.perf_counter()
            status, raw = caller.post(f"/v1/sessions/{tag}-{n % 20}/turns?wait=30", body)
            if status != 200 or b'"status":"completed"' not in raw:
                raise RuntimeError(f"quiet turn not completed: {status} {raw[:200]!r}")
            latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        caller.close()
    return latencies


class Flood:
    """``threads`` threads posting turns for one tenant at ``rate`` requests/s in all."""

    def __init__(self, port: int, key: str, rate: float, threads: int) -> None:
        self.port, self.key, self.rate, self.threads = port, key, rate, threads
        self.stop = threading.Event()
        self.answers: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _run(self, index: int) -> None:
        caller = Caller(self.port, self.key)
        interval = self.threads / self.rate
        body = json.dumps({"content": "flood"}).encode()
        next_at = time.perf_counter()
        n = 0
        try:
            while not self.stop.is_set():
                status, _ = caller.post(f"/v1/sessions/flood-{index}-{n % 50}/turns", body)
                n += 1
                with self._lock:
                    self.answers[status] += 1
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        finally:
            caller.close()

    def __enter__(self) -> Flood:
        self._workers = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(timeout=30)


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200, help="quiet turns per round and phase")
    parser.add_argument("--tokens", type=int, default=200, help="tokens each reply streams")
    parser.add_argument("--interval", type=float, default=0.001, help="s between tokens")
    parser.add_argument("--rpm", type=int, default=600, help="each tenant's requests/minute")
    parser.add_argument("--flood-rate", type=float, default=200.0, help="noisy requests/s")
    parser.add_argument("--flood-threads", type=int, default=4)
    add_common_args(parser, max_s=900)
    args = parser.parse_args(argv)
    report = Report("tenants", vars(args))

    stub = Stub(args.tokens, args.interval)
    with time_bound(args.max_seconds), ManagedRedis() as server:
        settings = Settings(
            redis_url=server.url,
            queue="chatlane",
            model="openai:stub",
            openai_base_url=stub.base_url,
            openai_api_key="bench",
            auth="keys",
            rate_requests_per_minute=args.rpm,
            rate_tokens_per_minute=0,
        )
        noisy = [f"noisy-{r}" for r in range(args.rounds)]  # a fresh budget each round
        keys = make_keys(settings, ["quiet", *noisy])
        with Cluster(settings, logs_dir("tenants"), workers=1, concurrency=256) as lane:
            log("warming up")
            quiet_turns(lane.port, keys["quiet"], 20, "warm")
            alone_rounds, flooded_rounds, answers = [], [], Counter[int]()
            for r in range(args.rounds):
                log(f"round {r + 1}/{args.rounds}: quiet tenant alone")
                alone_rounds.append(
                    summary(quiet_turns(lane.port, keys["quiet"], args.turns, f"a{r}"))
                )
                log(f"round {r + 1}/{args.rounds}: quiet tenant while the noisy one floods")
                with Flood(lane.port, keys[noisy[r]], args.flood_rate, args.flood_threads) as flood:
                    # Its budget is spent within seconds; the turns it bought are done a few
                    # seconds later. From then on every request of its is refused.
                    time.sleep(args.rpm / args.flood_rate + 8)
                    flooded_rounds.append(
                        summary(quiet_turns(lane.port, keys["quiet"], args.turns, f"f{r}"))
                    )
                answers.update(flood.answers)
    stub.proc.terminate()
    stub.proc.wait(10)

    alone, flooded = medians(alone_rounds), medians(flooded_rounds)
    cols = ["p50_ms", "p90_ms", "p99_ms", "max_ms"]
    report.table(
        f"Quiet tenant's turn latency (POST ?wait=30, {args.tokens} tokens streamed), "
        f"{args.turns} turns per phase, median of {args.rounds} rounds",
        ["", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
            ["quiet tenant alone", *(alone[c] for c in cols)],
            [f"while another floods at {args.flood_rate:g}/s", *(flooded[c] for c in cols)],
            ["ratio flooded / alone", *(ratio(flooded[c], alone[c]) for c in cols)],
        ],
    )
    total = sum(answers.values())
    report.table(
        f"The noisy tenant's answers (budget {args.rpm} requests/min), all rounds",
        ["status", "count", "share"],
        [[status, count, count / total] for status, count in sorted(answers.items())],
    )
    report.goal("quiet p99 flooded / alone", ratio(flooded["p99_ms"], alone["p99_ms"]), 1.2,
                higher_is_better=False)  # fmt: skip
    report.data = {"alone": alone_rounds, "flooded": flooded_rounds, "answers": dict(answers)}
    report.finish()


if __name__ == "__main__":
    main()
