"""Question 7: do replies reach whoever waits for them, fast?

Setup: one API process and one worker process (``CHATLANE_WORKER_CONCURRENCY`` = the
number of turns), a private redis-server, the loopback streaming model server in a
process of its own (``tests.support.streaming_server``), and in this process the
clients and a loopback webhook receiver (aiohttp).

- **SSE fan-out:** ``--clients`` clients each follow their own session's event stream
  (``GET /v1/sessions/{id}/events``) on the one API process; one turn per session streams
  ``--tokens`` tokens ``--interval`` s apart. For every event a client receives: its
  arrival time minus the time Redis wrote it (the event's id is the stream entry's id,
  which carries Redis's clock in ms), over every event and over those written after the
  last ``POST`` was answered (while the 1,000 turns are being accepted, the one API
  process is busy accepting them). The API process's memory, idle and at its peak, and
  the cores each process used while the turns streamed.
- **Time to first token:** ``--ttft-turns`` turns one after another, the model's first
  token ``--first`` s after each request: from sending ``POST …/turns`` to the first
  ``delta`` on the turn's event stream. Baseline, alternating with it: the same request
  straight to the model server, to its first content chunk. Overhead: the difference of
  the medians.
- **Webhooks:** ``--hooks`` turns, each naming a webhook on the loopback receiver, with a
  one-token model: from the turn's ``finished_at`` (the commit) to the receiver getting
  it, and deliveries per second of the worker process's sender.

    .venv/bin/python -m benchmarks.delivery [--clients 1000] [--tokens 100] [--interval 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import uvloop

from benchmarks._support import (
    CpuMeter,
    Report,
    add_common_args,
    log,
    logs_dir,
    medians,
    memory_kib,
    percentile,
    time_bound,
)
from benchmarks.streaming import Stub
from cli.redis_server import ManagedRedis
from cli.supervise import stop_all
from shared.settings import Settings
from tests.support.cluster import Cluster
from tests.support.receiver import Receiver


async def _follow(
    http: aiohttp.ClientSession,
    base: str,
    session: str,
    delays: list[tuple[int, float]],
    done: asyncio.Event,
) -> None:
    """Read a session's stream until its turn's final event; note when each event was
    written and how long it took to arrive."""
    async with http.get(f"{base}/v1/sessions/{session}/events") as response:
        async for line in response.content:
            if line.startswith(b"id: "):
                written_ms = int(line[4:].split(b"-", 1)[0])
                delays.append((written_ms, time.time() * 1000 - written_ms))
            elif line.startswith(b"event: completed") or line.startswith(b"event: failed"):
                break
    done.set()


async def fan_out(
    base: str, clients: int, tag: str, pids: dict[str, int], idle_kib: int
) -> dict[str, float]:
    """``pids``: the processes whose CPU is measured while the turns stream (``api``
    first); ``idle_kib``: the API process's memory before its first client."""
    delays: list[tuple[int, float]] = []
    sessions = [f"{tag}-fan-{i}" for i in range(clients)]
    connector = aiohttp.TCPConnector(limit=0)
    api_pid = pids["api"]
    peak_kib = idle_kib
    meters = {name: CpuMeter([pid]) for name, pid in pids.items()}
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as http:
        done = [asyncio.Event() for _ in sessions]
        followers = [
            asyncio.create_task(_follow(http, base, s, delays, d))
            for s, d in zip(sessions, done, strict=True)
        ]
        await asyncio.sleep(2)  # every stream open and waiting
        for meter in meters.values():
            meter.start()
        for i in range(0, clients, 100):
            await asyncio.gather(
                *(
                    http.post(f"{base}/v1/sessions/{s}/turns", json={"content": "go"})
                    for s in sessions[i : i + 100]
                )
            )
        posted_ms = time.time() * 1000
        while not all(d.is_set() for d in done):
            peak_kib = max(peak_kib, memory_kib(api_pid)["VmRSS"])
            await asyncio.sleep(0.2)
        await asyncio.gather(*followers)
    for meter in meters.values():
        meter.stop()
    cores = {f"cpu_{name}": meter.cpu_s / meter.wall_s for name, meter in meters.items()}
    every = [delay for _, delay in delays]
    steady = [delay for written, delay in delays if written > posted_ms]
    return cores | {
        "api_us_per_event": meters["api"].cpu_s / len(delays) * 1e6,
        "events": float(len(delays)),
        "delay_p50_ms": percentile(every, 50),
        "delay_p99_ms": percentile(every, 99),
        "delay_max_ms": max(every),
        "steady_p50_ms": percentile(steady, 50),
        "steady_p99_ms": percentile(steady, 99),
        "api_rss_idle_mib": idle_kib / 1024,
        "api_rss_peak_mib": peak_kib / 1024,
        "api_kib_per_client": (peak_kib - idle_kib) / clients,
    }


async def _direct_first_token(http: aiohttp.ClientSession, model_url: str, first_s: float) -> float:
    """The baseline: seconds from request to the first content chunk, straight from the
    model server (no chatlane in between)."""
    started = time.monotonic()
    body = {
        "model": "stub",
        "stream": True,
        "messages": [{"role": "user", "content": f"first={first_s}"}],
    }
    async with http.post(f"{model_url}/chat/completions", json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {") and b'"content"' in line:
                return time.monotonic() - started
    raise RuntimeError("the model server sent no content")


async def first_tokens(
    base: str, model_url: str, turns: int, first_s: float, tag: str
) -> dict[str, float]:
    """Alternating: the model server's own time to first token, then chatlane's (from
    sending ``POST …/turns`` to the first ``delta`` on the turn's event stream)."""
    direct: list[float] = []
    through: list[float] = []
    async with aiohttp.ClientSession() as http:
        for n in range(turns):
            direct.append(await _direct_first_token(http, model_url, first_s) * 1000)
            session = f"{tag}-ttft-{n}"
            started = time.monotonic()
            async with http.post(
                f"{base}/v1/sessions/{session}/turns", json={"content": f"first={first_s}"}
            ) as posted:
                turn = await posted.json()
            async with http.get(f"{base}/v1/sessions/{session}/turns/{turn['id']}/events") as r:
                async for line in r.content:
                    if line.startswith(b"event: delta"):
                        through.append((time.monotonic() - started) * 1000)
                        break
    return {
        "ttft_direct_p50_ms": percentile(direct, 50),
        "ttft_p50_ms": percentile(through, 50),
        "ttft_p99_ms": percentile(through, 99),
        "ttft_overhead_p50_ms": percentile(through, 50) - percentile(direct, 50),
    }


async def webhooks(base: str, hooks: int, tag: str) -> dict[str, float]:
    receiver = await Receiver().start()
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(0, hooks, 100):
                await asyncio.gather(
                    *(
                        http.post(
                            f"{base}/v1/sessions/{tag}-hook-{n}/turns",
                            json={"content": "tokens=1", "webhook": receiver.url},
                        )
                        for n in range(i, min(i + 100, hooks))
                    )
                )
            for _ in range(1200):  # up to two minutes
                if len(receiver.received) >= hooks:
                    break
                await asyncio.sleep(0.1)
    finally:
        await receiver.stop()
    latencies = []
    for got in receiver.received:
        finished = orjson.loads(got.body)["data"]["finished_at"]
        committed = datetime.fromisoformat(finished).timestamp()
        latencies.append((time.time() - (time.monotonic() - got.at) - committed) * 1000)
    arrivals = sorted(r.at for r in receiver.received)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    return {
        "delivered": float(len(receiver.received)),
        "hook_p50_ms": percentile(latencies, 50),
        "hook_p99_ms": percentile(latencies, 99),
        "deliveries_per_s": (len(arrivals) - 1) / span if span else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="SSE clients at once")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between tokens")
    parser.add_argument("--first", type=float, default=0.2, help="model's time to first token")
    parser.add_argument("--ttft-turns", type=int, default=50)
    parser.add_argument("--hooks", type=int, default=1000, help="turns with a webhook")
    add_common_args(parser, max_s=900)
    args = parser.parse_args(argv)
    report = Report("delivery", vars(args))
    stub = Stub(args.tokens, args.interval)
    rounds: list[dict[str, Any]] = []
    try:
        with time_bound(args.max_seconds), ManagedRedis() as server:
            settings = Settings(
                redis_url=server.url, queue="chatlane", model="openai:stub",
                openai_base_url=stub.base_url, openai_api_key="bench",
                worker_concurrency=args.clients, max_waiters=args.clients + 100,
                webhook_allow_private=True, model_timeout_s=60, turn_deadline_s=600,
            )  # fmt: skip
            with Cluster(
                settings, logs_dir("delivery/chatlane"), workers=1, concurrency=args.clients
            ) as lane:
                assert lane.api is not None
                pids = {
                    "api": lane.api.pid,
                    "worker": lane.worker_procs[0].pid,
                    "model": stub.proc.pid,
                    "redis": server.proc.pid if server.proc is not None else os.getpid(),
                    "clients": os.getpid(),
                }
                idle_kib = memory_kib(lane.api.pid)["VmRSS"]
                for r in range(args.rounds):
                    log(f"round {r + 1}/{args.rounds}")
                    row: dict[str, Any] = {}
                    row |= uvloop.run(fan_out(lane.base_url, args.clients, f"r{r}", pids, idle_kib))
                    log(f"fan-out : p99 {row['delay_p99_ms']:.1f} ms")
                    row |= uvloop.run(
                        first_tokens(
                            lane.base_url, stub.base_url, args.ttft_turns, args.first, f"r{r}"
                        )
                    )
                    log(f"ttft    : +{row['ttft_overhead_p50_ms']:.1f} ms p50")
                    row |= uvloop.run(webhooks(lane.base_url, args.hooks, f"r{r}"))
                    log(f"hooks   : p50 {row['hook_p50_ms']:.1f} ms")
                    rounds.append(row)
    finally:
        stop_all([stub.proc])
    m = medians(rounds)
    report.table(
        f"{args.clients} SSE clients on one API process, {args.tokens} tokens "
        f"{args.interval:g} s apart each, median of {args.rounds} rounds",
        ["events received", "Redis -> client p50 ms", "p99 ms", "max ms",
         "after the last POST: p50 ms", "p99 ms",
         "API RSS idle MiB", "API RSS peak MiB", "KiB per client"],
        [[m["events"], m["delay_p50_ms"], m["delay_p99_ms"], m["delay_max_ms"],
          m["steady_p50_ms"], m["steady_p99_ms"],
          m["api_rss_idle_mib"], m["api_rss_peak_mib"], m["api_kib_per_client"]]],
    )  # fmt: skip
    report.table(
        "Cores used while the turns stream (CPU seconds / wall seconds), and the API "
        "process's CPU per event delivered (accepting the turns included)",
        ["API", "worker", "model server", "Redis", "SSE clients", "total", "API µs/event"],
        [[m["cpu_api"], m["cpu_worker"], m["cpu_model"], m["cpu_redis"], m["cpu_clients"],
          sum(m[f"cpu_{n}"] for n in ("api", "worker", "model", "redis", "clients")),
          m["api_us_per_event"]]],
    )  # fmt: skip
    report.table(
        f"Time to first token beyond the model's own {args.first:g} s "
        f"({args.ttft_turns} turns), and webhooks ({args.hooks} turns)",
        ["TTFT model alone p50 ms", "TTFT via chatlane p50 ms", "p99 ms", "overhead p50 ms",
         "commit -> webhook p50 ms", "p99 ms", "deliveries/s (1 worker)", "delivered"],
        [[m["ttft_direct_p50_ms"], m["ttft_p50_ms"], m["ttft_p99_ms"],
          m["ttft_overhead_p50_ms"], m["hook_p50_ms"], m["hook_p99_ms"],
          m["deliveries_per_s"], m["delivered"]]],
    )  # fmt: skip
    report.goal("Redis -> SSE client p99 ms", m["delay_p99_ms"], 50.0, higher_is_better=False)
    report.goal(
        "same, once every turn is accepted", m["steady_p99_ms"], 50.0, higher_is_better=False
    )
    report.goal("TTFT overhead p50 ms", m["ttft_overhead_p50_ms"], 10.0, higher_is_better=False)
    report.data = {"rounds": rounds, "medians": m}
    report.finish()


if __name__ == "__main__":
    main()
