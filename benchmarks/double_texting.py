"""Question 9: double texting — model calls saved by ``coalesce``, and how fast a cancel
stops the model.

Setup: one API process and one worker process, a private redis-server, and the loopback
OpenAI-compatible streaming server (``tests.support.streaming_server``) in a process of
its own, wrapped here so that it also notes, per request, when it arrived, when its
stream ended with ``[DONE]`` and when the client closed the connection (a watcher reads
the request's socket while the reply streams: end of file or a reset is the close). The
clients (aiohttp) run in this process and speak only HTTP to the API.

- **Bursts** (``coalesce`` against ``enqueue``): ``--sessions`` sessions replay one fixed
  trace (``--seed``). Each session starts at a random point of the first 3 s, then sends
  bursts: 1-5 messages (uniform), ``--gap`` s apart (uniform, default 0.2-2 s), the next
  burst starting ``--pause`` s (uniform, default 5-8 s: longer than a reply of
  ``--tokens`` x ``--interval`` plus the debounce) after the previous burst's last
  message, as long as that start falls inside ``--window`` s. The same trace is played
  once per mode and round, each on fresh sessions: every message ``enqueue``;
  ``coalesce`` with ``debounce_s`` = ``--debounce``; ``coalesce`` with ``debounce_s=0``.
  Per run: messages sent, model calls started (requests the model server got), calls
  streamed to ``[DONE]``, calls aborted (closed by the worker before ``[DONE]``), replies
  in history, tokens the server streamed, and the latency a user sees: from sending a
  burst's last message to the answer covering it (that turn's ``finished_at``). Checked:
  every turn ended ``completed``, the history holds every user message once and in order.
- **Cancels**: ``--cancellers`` sessions at once, each ``--cancels`` times: a turn that
  streams slowly (``--cancel-tokens`` tokens ``--cancel-interval`` s apart) and a second
  turn queued behind it; once the first turn's first ``delta`` event arrives (its
  ``/events`` stream), a random 0.2-2 s later: ``GET`` the running turn (baseline: a plain
  round trip), ``POST …/cancel`` the queued turn (baseline: a cancel that stops no model
  call), ``POST …/cancel`` the running turn; measured from sending that cancel to the
  model server seeing the connection closed. Checked: each cancelled model call was made
  once and never finished, the queued turns never reached the model, a turn sent
  afterwards completes and the history holds none of the cancelled messages.

    .venv/bin/python -m benchmarks.double_texting [--sessions 100] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

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
from cli.redis_server import ManagedRedis
from cli.supervise import stop_all
from shared.settings import Settings
from tests.support.cluster import Cluster
from tests.support.streaming_server import StreamingModelServer

TERMINAL = {"completed", "failed", "cancelled"}

# --------------------------------------------------------------------------- the model server


class ClosingStub(StreamingModelServer):
    """The streaming server, noting per request its arrival, its ``[DONE]`` and the
    moment the client closed the connection (``GET /stats`` answers them as ``calls``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[dict[str, Any]] = []
        self.unexpected_bytes = 0
        self._readers: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._readers[writer] = reader
        try:
            await super()._connection(reader, writer)
        finally:
            self._readers.pop(writer, None)

    async def _watch(self, reader: asyncio.StreamReader, call: dict[str, Any]) -> None:
        """While a reply streams the client sends nothing (no pipelining): a read that
        returns is the close (end of file) or a reset."""
        try:
            data = await reader.read(1)
        except (ConnectionError, OSError):
            data = b""
        if data:  # not a close: give the byte back to the request reader
            self.unexpected_bytes += 1
            buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
            buffer[:0] = data
            return
        call["close"] = time.time()

    async def _answer(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        messages = request.get("messages", [])
        users = 0
        for message in reversed(messages):
            if message.get("role") != "user":
                break
            users += 1
        last = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        call: dict[str, Any] = {
            "last": last[:80],
            "users": users,
            "start": time.time(),
            "done": None,
            "close": None,
        }
        self.calls.append(call)
        reader = self._readers.get(writer)
        watcher = asyncio.create_task(self._watch(reader, call)) if reader else None
        try:
            keep = await super()._answer(request, writer)
            if keep:  # [DONE] sent (False: the client went away mid-stream)
                call["done"] = time.time()
            return keep
        finally:
            if call["done"] is None and call["close"] is None:
                # A write found the connection closed before the watcher ran (both woke in
                # the same turn of the loop): that is when this server saw the close.
                call["close"] = time.time()
            if watcher is not None:  # gone before the next request is read
                watcher.cancel()
                await asyncio.wait([watcher])

    def snapshot(self) -> dict[str, Any]:
        return {
            **super().snapshot(),
            "unexpected_bytes": self.unexpected_bytes,
            "calls": self.calls,
        }


def serve_stub(tokens: int, interval: float) -> None:
    """Run ``ClosingStub`` in this process until killed; print its port."""
    server = ClosingStub(tokens=tokens, interval_s=interval)

    async def run() -> None:
        listening = await server.start()
        print(f"listening {server.port}", flush=True)
        async with listening:
            await listening.serve_forever()

    uvloop.run(run())


class Stub:
    """``ClosingStub`` in a process of its own."""

    def __init__(self, tokens: int, interval: float, log_path: Path) -> None:
        with log_path.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.double_texting", "--serve-stub",
                 "--tokens", str(tokens), "--interval", str(interval)],
                stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=30) as r:
            stats: dict[str, Any] = json.loads(r.read())
            return stats

    def stop(self) -> None:
        stop_all([self.proc], grace_s=5)


# --------------------------------------------------------------------------- the trace


def make_trace(args: argparse.Namespace) -> list[list[list[float]]]:
    """Per session, its bursts; per burst, its messages' send times (s from the start)."""
    rng = random.Random(args.seed)
    trace = []
    for _ in range(args.sessions):
        t = rng.uniform(0, 3)
        bursts = []
        while t < args.window:
            times = [t]
            for _ in range(rng.randint(1, 5) - 1):
                t += rng.uniform(*args.gap)
                times.append(t)
            bursts.append(times)
            t += rng.uniform(*args.pause)
        trace.append(bursts)
    return trace


def stamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {await response.text()}")
        return await response.json()


async def play_session(
    http: aiohttp.ClientSession,
    base: str,
    sid: str,
    run: str,
    bursts: list[list[float]],
    extra: dict[str, Any],
    t0: float,
) -> list[dict[str, Any]]:
    """Send one session's bursts on schedule; wait until its last turn has ended."""
    sent: list[dict[str, Any]] = []
    for b, times in enumerate(bursts):
        for m, at in enumerate(times):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            content = f"{run}/{sid}/b{b}/m{m}: and one more thing about my order"
            t_send = time.time()
            async with http.post(
                f"{base}/v1/sessions/{sid}/turns", json={"content": content, **extra}
            ) as response:
                if response.status != 202:
                    raise RuntimeError(f"POST {sid}: {response.status} {await response.text()}")
                turn = await response.json()
            sent.append(
                {"burst": b, "last": m == len(times) - 1, "content": content,
                 "t_send": t_send, "turn": turn["id"]}
            )  # fmt: skip
    last = sent[-1]["turn"]
    while True:
        turn = await get_json(http, f"{base}/v1/sessions/{sid}/turns/{last}?wait=30")
        if turn["status"] in TERMINAL:
            return sent


async def check_session(
    http: aiohttp.ClientSession, base: str, sid: str, sent: list[dict[str, Any]]
) -> dict[str, Any]:
    """The session's turns and history against what was sent; each burst's latency."""
    page = await get_json(http, f"{base}/v1/sessions/{sid}/turns?limit=100")
    assert not page["has_more"], sid
    turns = {t["id"]: t for t in page["data"]}
    history = (await get_json(http, f"{base}/v1/sessions/{sid}/messages?limit=1000"))["data"]
    users = [m["data"]["content"] for m in history if m["type"] == "human"]
    replies = sum(1 for m in history if m["type"] == "ai")
    latencies = [
        stamp(turns[s["turn"]]["finished_at"]) - s["t_send"]
        for s in sent
        if s["last"] and turns[s["turn"]]["finished_at"]
    ]
    return {
        "statuses": Counter(t["status"] for t in turns.values()),
        "history_ok": users == [s["content"] for s in sent],
        "replies": replies,
        "answers": sum(1 for t in turns.values() if not t.get("answered_by")),
        "latencies": latencies,
    }


async def play(
    base: str, trace: list[list[list[float]]], run: str, extra: dict[str, Any]
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        sids = [f"{run}-s{i}" for i in range(len(trace))]
        t0 = time.monotonic() + 0.5
        sent = await asyncio.gather(
            *(play_session(http, base, sid, run, bursts, extra, t0)
              for sid, bursts in zip(sids, trace, strict=True))
        )  # fmt: skip
        wall = time.monotonic() - t0
        checks = await asyncio.gather(
            *(check_session(http, base, sid, s) for sid, s in zip(sids, sent, strict=True))
        )
    statuses: Counter[str] = Counter()
    for c in checks:
        statuses.update(c["statuses"])
    return {
        "wall_s": wall,
        "messages": sum(len(s) for s in sent),
        "bursts": sum(len(b) for b in trace),
        "statuses": dict(statuses),
        "sessions_history_ok": sum(1 for c in checks if c["history_ok"]),
        "replies": sum(c["replies"] for c in checks),
        "answers": sum(c["answers"] for c in checks),
        "latencies": [x for c in checks for x in c["latencies"]],
    }


def failed_drains(worker_log: Path) -> int:
    """How many times the worker logged that draining a session raised."""
    return worker_log.read_bytes().count(b"draining a session failed")


def bursts_run(
    base: str,
    stub: Stub,
    trace: list[list[list[float]]],
    run: str,
    extra: dict[str, Any],
    worker_log: Path,
) -> dict[str, Any]:
    before, drains = stub.stats(), failed_drains(worker_log)
    played = uvloop.run(play(base, trace, run, extra))
    time.sleep(0.5)  # aborted streams: the server notes their close
    after = stub.stats()
    calls = [c for c in after["calls"] if c["last"].startswith(run + "/")]
    lat = played.pop("latencies")
    open_ids = [i for i, c in enumerate(calls) if c["done"] is None and not c["close"]]
    later = Counter[str]()
    if open_ids:  # streams no one closed: see how they end
        time.sleep(5)
        again = [c for c in stub.stats()["calls"] if c["last"].startswith(run + "/")]
        for i in open_ids:
            c = again[i]
            later["done" if c["done"] else "closed" if c["close"] else "still open"] += 1
        log(f"  {len(open_ids)} model streams open after the run; 5 s later: {dict(later)}")
    return {
        "messages": float(played["messages"]),
        "bursts": float(played["bursts"]),
        "calls_started": float(len(calls)),
        "calls_completed": float(sum(1 for c in calls if c["done"] is not None)),
        "calls_aborted": float(sum(1 for c in calls if c["done"] is None and c["close"])),
        "calls_open": float(sum(1 for c in calls if c["done"] is None and not c["close"])),
        "replies": float(played["replies"]),
        "answers": float(played["answers"]),
        "tokens": float(after["tokens_sent"] - before["tokens_sent"]),
        "p50_s": percentile(lat, 50),
        "p90_s": percentile(lat, 90),
        "p99_s": percentile(lat, 99),
        "max_s": max(lat),
        "turns_completed": float(played["statuses"].get("completed", 0)),
        "turns_other": float(sum(n for s, n in played["statuses"].items() if s != "completed")),
        "sessions_history_ok": float(played["sessions_history_ok"]),
        "failed_drains": float(failed_drains(worker_log) - drains),
        "wall_s": played["wall_s"],
        "latencies_s": lat,
        "open_calls_later": dict(later),
        "calls": calls,
    }


# --------------------------------------------------------------------------- cancels


async def first_delta(http: aiohttp.ClientSession, base: str, sid: str, tid: str) -> None:
    async with http.get(f"{base}/v1/sessions/{sid}/turns/{tid}/events") as response:
        async for line in response.content:
            if line.startswith(b"event: delta"):
                return
            if line.startswith((b"event: completed", b"event: failed", b"event: cancelled")):
                raise RuntimeError(f"{tid} ended before streaming")
    raise RuntimeError(f"{tid}: event stream ended")


async def timed(
    http: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[float, float, dict[str, Any]]:
    t_sent = time.time()
    async with http.request(method, url, **kw) as response:
        doc = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"{method} {url}: {response.status} {doc}")
    return t_sent, time.time(), doc


async def canceller(
    http: aiohttp.ClientSession, base: str, sid: str, args: argparse.Namespace, rng: random.Random
) -> list[dict[str, Any]]:
    out = []
    turns = f"{base}/v1/sessions/{sid}/turns"
    slow = f"tokens={args.cancel_tokens} interval={args.cancel_interval}"
    for n in range(args.cancels):
        tag = f"{sid}-n{n}"
        bodies = [
            {"content": f"{tag}/running {slow}", "strategy": "enqueue"},
            {"content": f"{tag}/queued tokens=3 interval=0.001", "strategy": "enqueue"},
        ]
        ids = []
        for body in bodies:
            async with http.post(turns, json=body) as response:
                assert response.status == 202, await response.text()
                ids.append((await response.json())["id"])
        running, queued = ids
        await asyncio.wait_for(first_delta(http, base, sid, running), 30)
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        g0, g1, _ = await timed(http, "GET", f"{turns}/{running}")
        q0, q1, qdoc = await timed(http, "POST", f"{turns}/{queued}/cancel")
        c0, c1, cdoc = await timed(http, "POST", f"{turns}/{running}/cancel")
        out.append(
            {"tag": tag, "get_ms": (g1 - g0) * 1000, "queued_ms": (q1 - q0) * 1000,
             "cancel_sent": c0, "answer_ms": (c1 - c0) * 1000,
             "queued_status": qdoc["status"], "running_status": cdoc["status"]}
        )  # fmt: skip
    # The session's next turn runs at once, and nothing cancelled is in its history.
    body = {"content": "after tokens=3 interval=0.001"}
    async with http.post(f"{turns}?wait=30", json=body) as response:
        after = await response.json()
    history = (await get_json(http, f"{base}/v1/sessions/{sid}/messages?limit=1000"))["data"]
    out[-1]["after_status"] = after["status"]
    out[-1]["history"] = [m["data"]["content"] for m in history]
    return out


async def cancel_round(base: str, args: argparse.Namespace, r: int) -> list[dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        per = await asyncio.gather(
            *(canceller(http, base, f"cx-r{r}-c{i}", args, random.Random(f"{args.seed}/{r}/{i}"))
              for i in range(args.cancellers))
        )  # fmt: skip
    return [x for p in per for x in p]


def cancels_run(base: str, stub: Stub, args: argparse.Namespace, r: int) -> dict[str, Any]:
    done = uvloop.run(cancel_round(base, args, r))
    time.sleep(1.0)
    calls = stub.stats()["calls"]
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        by_tag.setdefault(call["last"].split("/")[0], []).append(call)
    closes, problems, details = [], Counter[str](), []
    for d in done:
        mine = [c for c in by_tag.get(d["tag"], []) if "/running" in c["last"]]
        queued = [c for c in by_tag.get(d["tag"], []) if "/queued" in c["last"]]
        found = []
        if d["running_status"] != "cancelled" or d["queued_status"] != "cancelled":
            found.append("not cancelled")
        if len(mine) != 1:
            found.append(f"running turn's model calls: {len(mine)}")
        if queued:
            found.append("queued turn reached the model")
        for call in mine:
            if call["done"] is not None:
                found.append("cancelled stream finished")
            elif call["close"] is None:
                found.append("stream never closed")
            else:
                closes.append((call["close"] - d["cancel_sent"]) * 1000)
        if "after_status" in d:
            if d["after_status"] != "completed":
                found.append("next turn not completed")
            if d["history"][:1] != ["after tokens=3 interval=0.001"] or len(d["history"]) != 2:
                found.append("history holds cancelled messages")
        problems.update(found)
        if found:
            details.append({"found": found, "cancel": d, "calls": mine + queued})
    row: dict[str, Any] = {"cancels": float(len(done)), "closed": float(len(closes))}
    for name, values in [
        ("close", closes),
        ("answer", [d["answer_ms"] for d in done]),
        ("queued", [d["queued_ms"] for d in done]),
        ("get", [d["get_ms"] for d in done]),
    ]:
        for q in (50, 90, 99):
            row[f"{name}_p{q}"] = percentile(values, q)
        row[f"{name}_max"] = max(values) if values else float("nan")
    row["problems"] = dict(problems)
    row["problem_details"] = details
    row["close_ms"] = closes
    return row


# --------------------------------------------------------------------------- main


def floats(row: dict[str, Any]) -> dict[str, float]:
    """A round's figures, without its lists of samples."""
    return {k: v for k, v in row.items() if isinstance(v, float)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--window", type=float, default=12.0, help="s in which bursts start")
    parser.add_argument("--gap", type=float, nargs=2, default=[0.2, 2.0], help="s in a burst")
    parser.add_argument("--pause", type=float, nargs=2, default=[5.0, 8.0], help="s between")
    parser.add_argument("--debounce", type=float, default=1.0, help="coalesce's debounce_s")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    parser.add_argument("--interval", type=float, default=0.015, help="s between tokens")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--cancellers", type=int, default=20, help="sessions cancelling at once")
    parser.add_argument("--cancels", type=int, default=5, help="cancels per session and round")
    parser.add_argument("--cancel-tokens", type=int, default=3000)
    parser.add_argument("--cancel-interval", type=float, default=0.02)
    parser.add_argument("--quick", action="store_true", help="~1 minute: 1 round, smaller")
    parser.add_argument("--serve-stub", action="store_true", help=argparse.SUPPRESS)
    add_common_args(parser, max_s=900)
    args = parser.parse_args(argv)
    if args.serve_stub:
        serve_stub(args.tokens, args.interval)
        return
    if args.quick:
        args.rounds, args.sessions, args.window = 1, 50, 8.0
    report = Report("double_texting", vars(args))
    trace = make_trace(args)
    modes: list[tuple[str, dict[str, Any]]] = [
        ("enqueue", {"strategy": "enqueue"}),
        (f"coalesce {args.debounce:g} s", {"strategy": "coalesce", "debounce_s": args.debounce}),
        ("coalesce 0 s", {"strategy": "coalesce", "debounce_s": 0}),
    ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in modes}
    cancels: list[dict[str, Any]] = []
    logs = logs_dir("double_texting")
    stub = Stub(args.tokens, args.interval, logs / "stub.log")
    try:
        with time_bound(args.max_seconds), ManagedRedis() as server:
            settings = Settings(
                redis_url=server.url, queue="chatlane", model="openai:stub",
                openai_base_url=stub.base_url, openai_api_key="bench",
                model_timeout_s=60, turn_deadline_s=600,
            )  # fmt: skip
            with Cluster(settings, logs, workers=1, concurrency=1000) as lane:
                for r in range(args.rounds):
                    order = modes[r % len(modes) :] + modes[: r % len(modes)]
                    for name, extra in order:
                        run = f"r{r}{name.replace(' ', '').replace('.', '')}"
                        log(f"round {r + 1}/{args.rounds}: bursts, {name}")
                        res = bursts_run(
                            lane.base_url, stub, trace, run, extra, lane.logs / "w1.log"
                        )
                        log(
                            f"  {res['messages']:.0f} messages, {res['calls_started']:.0f} calls "
                            f"started, {res['calls_completed']:.0f} completed, "
                            f"p50 {res['p50_s']:.2f} s, p99 {res['p99_s']:.2f} s, "
                            f"{res['wall_s']:.0f} s"
                        )
                        results[name].append(res)
                    log(f"round {r + 1}/{args.rounds}: cancels")
                    row = cancels_run(lane.base_url, stub, args, r)
                    log(
                        f"  {row['cancels']:.0f} cancels: close p50 {row['close_p50']:.1f} ms, "
                        f"p99 {row['close_p99']:.1f} ms; problems {row['problems']}"
                    )
                    cancels.append(row)
                unexpected = stub.stats()["unexpected_bytes"]
    finally:
        stub.stop()

    n = args.rounds
    med = {name: medians([floats(x) for x in rs]) for name, rs in results.items()}
    base = med["enqueue"]
    cols = ["messages", "calls_started", "calls_completed", "calls_aborted", "replies",
            "tokens", "p50_s", "p90_s", "p99_s", "max_s"]  # fmt: skip
    rows = [[name, *(m[c] for c in cols)] for name, m in med.items()]
    for name, m in med.items():
        if name != "enqueue":
            rows.append([f"ratio {name} / enqueue", *(ratio(m[c], base[c]) for c in cols)])
    report.table(
        f"Bursty trace: {args.sessions} sessions, {base['bursts']:.0f} bursts of 1-5 messages "
        f"{args.gap[0]:g}-{args.gap[1]:g} s apart, {args.pause[0]:g}-{args.pause[1]:g} s "
        f"between bursts (seed {args.seed}); replies of {args.tokens} tokens "
        f"{args.interval:g} s apart; median of {n} rounds",
        ["", "messages", "model calls started", "streamed to [DONE]", "aborted",
         "replies in history", "tokens streamed", "last message -> answer p50 s", "p90 s",
         "p99 s", "max s"],
        rows,
    )  # fmt: skip
    report.table(
        f"Checks, all {n} rounds: turns, histories, model calls, the worker's log",
        ["", "turns completed", "not completed", "sessions with exact history",
         "calls still open", "streamed to [DONE], then discarded", "messages per reply",
         "failed session drains (worker log)"],
        [[name, sum(x["turns_completed"] for x in rs), sum(x["turns_other"] for x in rs),
          f"{sum(x['sessions_history_ok'] for x in rs):.0f} / {args.sessions * n}",
          sum(x["calls_open"] for x in rs),
          sum(x["calls_completed"] - x["replies"] for x in rs),
          ratio(sum(x["messages"] for x in rs), sum(x["replies"] for x in rs)),
          sum(x["failed_drains"] for x in rs)]
         for name, rs in results.items()],
    )  # fmt: skip
    cm = medians([floats(c) for c in cancels])
    pooled = [x for c in cancels for x in c["close_ms"]]
    qs = ("p50", "p90", "p99", "max")
    report.table(
        f"Cancel of a running turn: {args.cancellers} sessions at once, {args.cancels} "
        f"cancels each per round, 0.2-2 s into a stream of a token every "
        f"{args.cancel_interval:g} s; median of {n} rounds",
        ["", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
            ["cancel sent -> model connection closed", *(cm[f"close_{q}"] for q in qs)],
            ["cancel sent -> API answered (running turn)", *(cm[f"answer_{q}"] for q in qs)],
            ["baseline: cancel of a queued turn, round trip", *(cm[f"queued_{q}"] for q in qs)],
            ["baseline: GET the turn, round trip", *(cm[f"get_{q}"] for q in qs)],
            ["ratio closed / queued cancel",
             *(ratio(cm[f"close_{q}"], cm[f"queued_{q}"]) for q in qs)],
            [f"all {len(pooled)} closes of {n} rounds pooled", percentile(pooled, 50),
             percentile(pooled, 90), percentile(pooled, 99), max(pooled, default=math.nan)],
        ],
    )  # fmt: skip
    problems: Counter[str] = Counter()
    for c in cancels:
        problems.update(c["problems"])
    report.table(
        f"Cancel checks, all {n} rounds",
        ["cancels", "model connections seen closed", "problems", "bytes read mid-stream"],
        [[sum(int(c["cancels"]) for c in cancels), len(pooled),
          ", ".join(f"{k}: {v}" for k, v in problems.items()) or "none", unexpected]],
    )  # fmt: skip
    report.data = {"trace": trace, "bursts": results, "cancels": cancels}
    report.finish()


if __name__ == "__main__":
    main()
