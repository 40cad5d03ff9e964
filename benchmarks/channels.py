"""Question 10: messaging channels — how fast a platform's webhook is answered, and how
long a chat waits for its reply, beside the plain HTTP API.

Setup: one API process and one worker process (engine capacity 1,000), a private
redis-server, the loopback streaming model server (``tests.support.streaming_server``)
in a process of its own, and the loopback fake of the four platforms' send APIs
(``tests.support.platforms``) in a process of its own too, which answers, besides the
platforms' own paths, what it accepted (a long poll on a second port). Its ``Sent.at``
is ``time.monotonic()``: ``CLOCK_MONOTONIC``, one clock for every process of the
machine, so it compares with this process's send times. One channel endpoint per
platform (``POST /v1/channels``, ``api_base`` at the fake, ``per_second`` 1,000 so the
platforms' per-bot limits never throttle) with strategy ``enqueue`` and debounce 0, and
one more per platform with the defaults (``coalesce``, 1.5 s). The clients (aiohttp, in
this process) speak only HTTP.

- **Webhook answers** (what Telegram, Slack, WhatsApp and Twilio see): ``--concurrency``
  connections (Telegram opens up to 40) post ``--messages`` signed inbound messages, each
  from a chat of its own, to one platform's webhook, as fast as they are answered;
  per run the answer time (p50/p99) and requests/s, the API's CPU per request, and the
  worker's and Redis's CPU per message until every turn has run and every reply reached
  the fake (the model answers these in 5 tokens at once); then the same with ``--probe``
  messages over one connection, the answer time with no queue in front of it. Baseline
  in the same rounds: ``POST /v1/sessions/{sid}/turns`` (no wait) with the same content
  over as many connections, each to a session of its own. The order of the five runs
  rotates from round to round; a warm-up of 100 messages each goes first.
- **Round trips** (what a chat waits for): ``--chats`` chats, spread over the four
  platforms, each starting at a seeded random point of the first 2 s and sending
  ``--per-chat`` messages, each only once the previous reply reached the fake (so the
  platform's 1 s pace per chat, which a reply can only wait for when it follows another
  within the second, never applies: a reply takes the model's ``--tokens`` x
  ``--interval`` s). Measured from sending the webhook request to the fake accepting the
  reply; the turn record's ``created_at``, ``started_at`` and ``finished_at`` split it
  into accept, queue, model and reply delivery, and every 50 ms the size of the outbox
  index (sessions whose committed outbox messages no sender has turned into replies yet)
  is sampled. Baseline in the same rounds: the same sessions' turns through
  ``POST /v1/sessions/{sid}/turns?wait=60``, send to answer read. A third run per round
  sends the same trace to the ``coalesce`` endpoints. The order of the three rotates.

Checked: every request answered 2xx; every turn completed with the model's reply; every
chat got exactly one reply per message, in its own chat, nothing went to a chat that sent
nothing (counted again at the end, after a pause, for late duplicates); each round-trip
chat's session holds its messages and replies in order.

    .venv/bin/python -m benchmarks.channels [--rounds 3] [--messages 500] [--chats 200]
        [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
import uvloop

from benchmarks._support import (
    CpuMeter,
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
from cli.redis_server import ManagedRedis
from cli.supervise import stop_all
from shared.channels.endpoints import ChannelEndpoint
from shared.channels.platform import CHANNELS, ChannelName
from shared.keys import GlobalKeys
from shared.settings import Settings
from tests.support.cluster import Cluster
from tests.support.platform_requests import (
    SLACK_SIGNING_SECRET,
    TELEGRAM_SECRET_TOKEN,
    WHATSAPP_APP_SECRET,
    SignedRequest,
    text_message_request,
)
from tests.support.platforms import (
    SLACK_BOT_TOKEN,
    TELEGRAM_TOKEN,
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
    TWILIO_SMS_NUMBER,
    WHATSAPP_PHONE_NUMBER_ID,
    WHATSAPP_TOKEN,
    PlatformsFake,
    Sent,
)
from tests.support.streaming_server import reply_words

SLACK_DEADLINE_MS = 3000.0
SHORT = "tokens=5 interval=0"  # the model's answer in the webhook runs: 5 tokens at once


# --------------------------------------------------------------------------- the platforms


class RecordingFake(PlatformsFake):
    """The platforms fake, answering what it accepted from a given position on."""

    def since(self, start: int) -> tuple[int, list[Sent]]:
        with self._lock:
            return len(self._sent), self._sent[start:]


def serve_platforms() -> None:
    """Run ``RecordingFake`` in this process until killed; print its two ports. The second
    answers ``GET /sent?from=N&wait=S``: the sends accepted from position N on, as soon as
    there is one (or after S seconds), as ``[platform, chat, text, at]``."""
    from aiohttp import web

    fake = RecordingFake()

    async def sent(request: web.Request) -> web.Response:
        start = int(request.query.get("from", "0"))
        deadline = time.monotonic() + float(request.query.get("wait", "0"))
        total, found = fake.since(start)
        while not found and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
            total, found = fake.since(start)
        rows = [[s.platform, s.chat, s.text, s.at] for s in found]
        body = orjson.dumps({"total": total, "sent": rows})
        return web.Response(body=body, content_type="application/json")

    async def run() -> None:
        await fake.start()
        app = web.Application()
        app.router.add_get("/sent", sent)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"listening {fake.port} {port}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(run())


class Platforms:
    """``RecordingFake`` in a process of its own."""

    def __init__(self, log_path: Path) -> None:
        with log_path.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.channels", "--serve-platforms"],
                stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        _, port, records = self.proc.stdout.readline().split()
        self.port, self.records_port = int(port), int(records)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sent(self, start: int = 0) -> tuple[int, list[list[Any]]]:
        url = f"http://127.0.0.1:{self.records_port}/sent?from={start}"
        with urllib.request.urlopen(url, timeout=60) as r:
            doc = json.loads(r.read())
        return int(doc["total"]), doc["sent"]

    async def sent_async(
        self, http: aiohttp.ClientSession, start: int, wait_s: float
    ) -> tuple[int, list[list[Any]]]:
        url = f"http://127.0.0.1:{self.records_port}/sent?from={start}&wait={wait_s}"
        async with http.get(url) as r:
            doc = orjson.loads(await r.read())
        return int(doc["total"]), doc["sent"]

    def stop(self) -> None:
        stop_all([self.proc], grace_s=5)


class Model:
    """The streaming model server (``python -m tests.support.streaming_server``)."""

    def __init__(self, tokens: int, interval: float, log_path: Path) -> None:
        with log_path.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.streaming_server", "--port", "0",
                 "--tokens", str(tokens), "--interval", str(interval)],
                stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=30) as r:
            stats: dict[str, int] = json.loads(r.read())
            return stats

    def stop(self) -> None:
        stop_all([self.proc], grace_s=5)


# --------------------------------------------------------------------------- the bots


@dataclass
class Bot:
    """One channel endpoint, and how its platform talks to chatlane."""

    channel: ChannelName
    id: str
    webhook_url: str

    def session(self, chat: str) -> str:
        """The session chatlane keeps for one chat (``ChannelEndpoint.session_for``)."""
        endpoint = ChannelEndpoint(
            id=self.id, tenant="-", channel=self.channel, credentials={}, created_at=0
        )
        return endpoint.session_for(
            chat, None, TWILIO_SMS_NUMBER if self.channel == "twilio" else None
        )

    def inbound(self, chat: str, text: str) -> SignedRequest:
        """The platform's webhook request for one text message, signed as it signs."""
        return text_message_request(self.channel, chat, text, url=self.webhook_url)


def chat_id(channel: str, block: int, n: int) -> str:
    """A chat as the platform names it (and as its send API records it); ``block`` keeps
    every run's chats apart."""
    k = block * 100_000 + n
    return {
        "telegram": str(700_000_000 + k),
        "slack": f"D{k:09d}",
        "whatsapp": f"1555{k:08d}",
        "twilio": f"+1555{k:08d}",
    }[channel]


def credentials(channel: str) -> dict[str, str]:
    return {
        "telegram": {"bot_token": TELEGRAM_TOKEN, "secret_token": TELEGRAM_SECRET_TOKEN},
        "slack": {"bot_token": SLACK_BOT_TOKEN, "signing_secret": SLACK_SIGNING_SECRET},
        "whatsapp": {
            "access_token": WHATSAPP_TOKEN,
            "app_secret": WHATSAPP_APP_SECRET,
            "phone_number_id": WHATSAPP_PHONE_NUMBER_ID,
        },
        "twilio": {"account_sid": TWILIO_ACCOUNT_SID, "auth_token": TWILIO_AUTH_TOKEN},
    }[channel]


def connect(base: str, channel: ChannelName, fake_url: str, **settings: Any) -> Bot:
    body = {
        "channel": channel,
        "credentials": credentials(channel),
        "api_base": fake_url + "/api" if channel == "slack" else fake_url,
        "per_second": 1000,
        **settings,
    }
    request = urllib.request.Request(
        f"{base}/v1/channels", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 201, r.status
        endpoint = json.loads(r.read())
    return Bot(channel, endpoint["id"], endpoint["webhook_url"])


def stamp(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else float("nan")


# --------------------------------------------------------------------------- webhook answers


@dataclass(frozen=True)
class Post:
    url: str
    body: bytes
    headers: dict[str, str]


async def fire(posts: Sequence[Post], concurrency: int) -> dict[str, Any]:
    """Post every request over ``concurrency`` keep-alive connections, each as soon as
    its connection's previous answer came; the answer time of each (ms) and the codes."""
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    queue = iter(posts)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def connection() -> None:
            for post in queue:
                t0 = time.perf_counter()
                async with http.post(post.url, data=post.body, headers=post.headers) as r:
                    await r.read()
                    codes[r.status] += 1
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "codes": codes, "wall_s": wall}


def answer_posts(
    mode: str, bots: dict[str, Bot], base: str, block: int, n: int, content: str
) -> tuple[list[Post], list[str]]:
    """The requests of one run, and the chats (sessions for the baseline) they come from."""
    posts, chats = [], []
    for i in range(n):
        text = f"{content} #{i}"
        if mode == "baseline":
            sid = f"a{block}-s{i}"
            body = orjson.dumps({"content": text, "strategy": "enqueue"})
            url = f"{base}/v1/sessions/{sid}/turns"
            posts.append(Post(url, body, {"Content-Type": "application/json"}))
            chats.append(sid)
            continue
        bot = bots[mode]
        chat = chat_id(mode, block, i)
        signed = bot.inbound(chat, text)
        posts.append(Post(signed.url or bot.webhook_url, signed.body, dict(signed.headers)))
        chats.append(chat)
    return posts, chats


@dataclass
class Rig:
    base: str
    model: Model
    platforms: Platforms
    pids: dict[str, int]
    client: redis.Redis
    keys: GlobalKeys
    expected: Counter[tuple[str, str]]  # (platform, chat) -> replies it is owed


class Backlog:
    """While a run lasts, every 50 ms: how many sessions the outbox index holds (commits
    whose outbox messages no sender has yet turned into replies and deliveries) and how
    many the reply schedule holds (lanes with a reply due, or paced after one)."""

    def __init__(self, rig: Rig) -> None:
        self._client = rig.client
        self._keys = rig.keys
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backlog", daemon=True)
        self.samples: list[tuple[float, int, int]] = []

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            pipe = self._client.pipeline(transaction=False)
            pipe.zcard(self._keys.outbox_index)
            pipe.zcard(self._keys.replies_due)
            outbox, due = pipe.execute()
            self.samples.append((time.monotonic(), int(outbox), int(due)))

    def __enter__(self) -> Backlog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict[str, float]:
        outbox = [s[1] for s in self.samples] or [0]
        due = [s[2] for s in self.samples] or [0]
        return {
            "outbox_max": float(max(outbox)),
            "outbox_mean": sum(outbox) / len(outbox),
            "due_max": float(max(due)),
        }


def wait_drained(rig: Rig, calls_to: int, sent_to: int, timeout_s: float = 180) -> None:
    """Until the model completed ``calls_to`` calls and the fake accepted ``sent_to``."""
    deadline = time.monotonic() + timeout_s
    while True:
        calls = rig.model.stats()["completed"]
        sent, _ = rig.platforms.sent(1 << 62)
        if calls >= calls_to and sent >= sent_to:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"model calls {calls}/{calls_to}, replies {sent}/{sent_to}")
        time.sleep(0.05)


def answers_run(
    rig: Rig, bots: dict[str, Bot], mode: str, block: int, count: int, concurrency: int
) -> dict[str, Any]:
    """``count`` messages to one webhook (or the turns API) over ``concurrency``
    connections; then until the model answered each and the fake got each reply."""
    content = f"{SHORT} hello, where is my order? it said tuesday"
    posts, chats = answer_posts(mode, bots, rig.base, block, count, content)
    calls0 = rig.model.stats()["completed"]
    sent0, _ = rig.platforms.sent(1 << 62)
    api = CpuMeter([rig.pids["api"]]).start()
    rest = CpuMeter([rig.pids["worker"]]).start()
    store = CpuMeter([rig.pids["redis"]]).start()
    fired = uvloop.run(fire(posts, concurrency))
    api.stop()
    replies = 0 if mode == "baseline" else len(posts)
    wait_drained(rig, calls0 + len(posts), sent0 + replies)
    rest.stop()
    store.stop()
    drained_s = rest.wall_s
    _, got = rig.platforms.sent(sent0)
    per_chat = Counter(row[1] for row in got if row[0] == mode)
    for chat in chats:
        if mode != "baseline":
            rig.expected[(mode, chat)] += 1
    lat = fired["latencies"]
    ok = sum(n for code, n in fired["codes"].items() if 200 <= code < 300)
    n = len(posts)
    return {
        "requests": float(n),
        "answered_2xx": float(ok),
        "per_s": n / fired["wall_s"],
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat),
        "api_cpu_us": api.cpu_s / n * 1e6,
        "worker_cpu_ms": rest.cpu_s / n * 1000,
        "redis_cpu_ms": store.cpu_s / n * 1000,
        "drained_s": drained_s,
        "done_per_s": n / drained_s,
        "model_calls": float(rig.model.stats()["completed"] - calls0),
        "replies": float(sum(per_chat.values())),
        "chats_one_reply": float(sum(1 for c in chats if per_chat.get(c) == 1)),
        "wall_s": fired["wall_s"],
        "codes": dict(fired["codes"]),
        "latencies_ms": lat,
    }


# --------------------------------------------------------------------------- round trips


def trace(args: argparse.Namespace) -> list[float]:
    """Per chat, when it sends its first message (s from the start)."""
    rng = random.Random(args.seed)
    return [rng.uniform(0, args.spread) for _ in range(args.chats)]


async def baseline_chat(
    http: aiohttp.ClientSession, base: str, sid: str, texts: list[str], t0: float
) -> list[dict[str, Any]]:
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    out = []
    for text in texts:
        body = {"content": text, "strategy": "enqueue"}
        sent_m, sent_w = time.monotonic(), time.time()
        async with http.post(f"{base}/v1/sessions/{sid}/turns?wait=60", json=body) as r:
            turn = await r.json()
            status = r.status
        got_m = time.monotonic()
        out.append(
            {"chat": sid, "status": status, "sent_m": sent_m, "sent_w": sent_w,
             "answer_ms": (got_m - sent_m) * 1000, "reply_m": got_m, "turn": turn}
        )  # fmt: skip
    return out


async def channel_chat(
    http: aiohttp.ClientSession,
    bot: Bot,
    chat: str,
    texts: list[str],
    t0: float,
    inbox: asyncio.Queue[list[Any]],
) -> list[dict[str, Any]]:
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    out = []
    for text in texts:
        signed = bot.inbound(chat, text)
        sent_m, sent_w = time.monotonic(), time.time()
        async with http.post(signed.url or bot.webhook_url, data=signed.body,
                             headers=signed.headers) as r:  # fmt: skip
            await r.read()
            status = r.status
        answer_ms = (time.monotonic() - sent_m) * 1000
        row = await asyncio.wait_for(inbox.get(), 60)
        out.append(
            {"chat": chat, "channel": bot.channel, "status": status, "sent_m": sent_m,
             "sent_w": sent_w, "answer_ms": answer_ms, "reply_m": row[3], "text": row[2]}
        )  # fmt: skip
    return out


async def play(
    rig: Rig, bots: dict[str, Bot] | None, block: int, starts: list[float], per_chat: int
) -> dict[str, Any]:
    """One round-trip run: every chat of the trace, to ``bots`` (None: the baseline)."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        position, _ = await rig.platforms.sent_async(http, 1 << 62, 0)
        inboxes: dict[tuple[str, str], asyncio.Queue[list[Any]]] = {}
        strays: list[list[Any]] = []
        chats = []
        for i in range(len(starts)):
            channel = CHANNELS[i % len(CHANNELS)]
            chat = chat_id(channel, block, i) if bots else f"b{block}-s{i}"
            chats.append((channel, chat))
            inboxes[(channel, chat)] = asyncio.Queue()

        async def poll() -> None:
            nonlocal position
            while True:
                _, rows = await rig.platforms.sent_async(http, position, 1.0)
                position += len(rows)
                for row in rows:
                    inbox = inboxes.get((row[0], row[1]))
                    (inbox.put_nowait(row) if inbox is not None else strays.append(row))

        poller = asyncio.create_task(poll())
        t0 = time.monotonic() + 0.2
        texts = [
            [f"chat {i}, message {k}: is the blue one back in stock?" for k in range(per_chat)]
            for i in range(len(starts))
        ]
        if bots:
            runs = [
                channel_chat(http, bots[ch], chat, texts[i], t0 + starts[i], inboxes[(ch, chat)])
                for i, (ch, chat) in enumerate(chats)
            ]
        else:
            runs = [
                baseline_chat(http, rig.base, chat, texts[i], t0 + starts[i])
                for i, (_, chat) in enumerate(chats)
            ]
        try:
            done = await asyncio.gather(*runs)
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        wall = max(x["reply_m"] for d in done for x in d) - t0
        if bots:  # the turn records, and each session's history
            for (channel, chat), rows in zip(chats, done, strict=True):
                sid = bots[channel].session(chat)
                page = await (
                    await http.get(f"{rig.base}/v1/sessions/{sid}/turns?limit=100")
                ).json()
                history = await (
                    await http.get(f"{rig.base}/v1/sessions/{sid}/messages?limit=100")
                ).json()
                for row, turn in zip(rows, page["data"], strict=False):
                    row["turn"] = turn
                for row in rows:
                    row["history"] = [m["data"]["content"] for m in history["data"]]
                    row["turns"] = len(page["data"])
    return {"rows": [x for d in done for x in d], "texts": texts, "chats": chats,
            "wall_s": wall, "strays": strays}  # fmt: skip


def trips_run(
    rig: Rig, bots: dict[str, Bot] | None, block: int, args: argparse.Namespace
) -> dict[str, Any]:
    starts = trace(args)
    with Backlog(rig) as backlog:
        played = uvloop.run(play(rig, bots, block, starts, args.per_chat))
    expected_reply = "".join(w if i == args.tokens - 1 else w + " "
                             for i, w in enumerate(reply_words(args.tokens)))  # fmt: skip
    offset = time.time() - time.monotonic()  # CLOCK_MONOTONIC -> wall clock, this machine
    rows = played["rows"]
    problems: Counter[str] = Counter()
    stages: dict[str, list[float]] = {"accept": [], "queue": [], "model": [], "deliver": []}
    by_channel: dict[str, list[float]] = {c: [] for c in CHANNELS}
    lat = []
    for row in rows:
        total = (row["reply_m"] - row["sent_m"]) * 1000
        lat.append(total)
        turn = row.get("turn") or {}
        if bots:
            by_channel[row["channel"]].append(total)
            if row["status"] != 200:
                problems["webhook not answered 200"] += 1
            if row["text"] != expected_reply:
                problems["reply is not the model's"] += 1
        elif row["status"] != 200:
            problems["turn not finished within wait"] += 1
        if turn.get("status") != "completed":
            problems["turn not completed"] += 1
        elif (turn.get("output") or {}).get("content") != expected_reply:
            problems["turn output is not the model's"] += 1
        created, started, finished = (
            stamp(turn.get(k)) for k in ("created_at", "started_at", "finished_at")
        )
        reply_w = row["reply_m"] + offset
        stages["accept"].append((created - row["sent_w"]) * 1000)
        stages["queue"].append((started - created) * 1000)
        stages["model"].append((finished - started) * 1000)
        stages["deliver"].append((reply_w - finished) * 1000)
    if bots:
        for (channel, chat), texts in zip(played["chats"], played["texts"], strict=True):
            mine = [r for r in rows if r["chat"] == chat]
            rig.expected[(channel, chat)] += len(texts)
            if [r["turn"]["input"]["content"] for r in mine if "turn" in r] != texts:
                problems["turns differ from the messages sent"] += 1
            if mine and mine[0]["turns"] != len(texts):
                problems["more turns than messages"] += 1
            wanted = [x for t in texts for x in (t, expected_reply)]
            if mine and mine[0]["history"] != wanted:
                problems["history out of order"] += 1
        problems["replies to chats that sent nothing"] += len(played["strays"])
    out: dict[str, Any] = {
        "messages": float(len(rows)),
        "p50_s": percentile(lat, 50) / 1000,
        "p90_s": percentile(lat, 90) / 1000,
        "p99_s": percentile(lat, 99) / 1000,
        "max_s": max(lat) / 1000,
        "per_s": len(rows) / played["wall_s"],
        "answer_p50_ms": percentile([r["answer_ms"] for r in rows], 50),
        "answer_p99_ms": percentile([r["answer_ms"] for r in rows], 99),
    }
    for name, values in stages.items():
        out[f"{name}_p50_ms"] = percentile(values, 50)
        out[f"{name}_p99_ms"] = percentile(values, 99)
    for channel, values in by_channel.items():
        if values:
            out[f"{channel}_p50_s"] = percentile(values, 50) / 1000
            out[f"{channel}_p99_s"] = percentile(values, 99) / 1000
    out |= backlog.summary()
    out["problems"] = dict(+problems)
    out["latencies_ms"] = lat
    out["backlog"] = backlog.samples
    return out


# --------------------------------------------------------------------------- main


def floats(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, float)}


def rotated(items: list[str], r: int) -> list[str]:
    return items[r % len(items) :] + items[: r % len(items)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=40, help="webhook connections")
    parser.add_argument("--messages", type=int, default=500, help="webhook posts per run")
    parser.add_argument(
        "--probe", type=int, default=200, help="webhook posts per run over one connection"
    )
    parser.add_argument("--chats", type=int, default=200, help="round-trip chats")
    parser.add_argument("--per-chat", type=int, default=3, help="messages per chat")
    parser.add_argument("--spread", type=float, default=2.0, help="s over which chats start")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per reply")
    parser.add_argument("--interval", type=float, default=0.02, help="s between tokens")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="~80 s: 1 round, smaller")
    parser.add_argument("--serve-platforms", action="store_true", help=argparse.SUPPRESS)
    add_common_args(parser, max_s=900)
    args = parser.parse_args(argv)
    if args.serve_platforms:
        serve_platforms()
        return
    if args.quick:
        args.rounds, args.messages, args.probe, args.chats, args.per_chat = 1, 500, 100, 40, 2
    report = Report("channels", vars(args))
    logs = logs_dir("channels")
    answer_modes = ["baseline", *CHANNELS]
    trip_modes = ["baseline", "channels", "coalesce"]
    levels = [(args.concurrency, args.messages), (1, args.probe)]
    answers: dict[int, dict[str, list[dict[str, Any]]]] = {
        c: {m: [] for m in answer_modes} for c, _ in levels
    }
    trips: dict[str, list[dict[str, Any]]] = {m: [] for m in trip_modes}
    model = Model(args.tokens, args.interval, logs / "model.log")
    try:
        platforms = Platforms(logs / "platforms.log")
    except BaseException:
        model.stop()
        raise
    try:
        with time_bound(args.max_seconds), ManagedRedis() as server:
            settings = Settings(
                redis_url=server.url, queue="chatlane", model="openai:stub",
                openai_base_url=model.base_url, openai_api_key="bench",
                model_timeout_s=60, turn_deadline_s=600, channel_allow_private=True,
            )  # fmt: skip
            with Cluster(settings, logs, workers=1, concurrency=1000) as lane:
                assert lane.api is not None
                client = redis.Redis.from_url(server.url)
                pids = {"api": lane.api.pid, "worker": lane.worker_procs[0].pid,
                        "redis": redis_pid(client)}  # fmt: skip
                keys = GlobalKeys(settings.key_prefix)
                rig = Rig(lane.base_url, model, platforms, pids, client, keys, Counter())
                fake = platforms.base_url
                plain: dict[str, Bot] = {
                    c: connect(lane.base_url, c, fake, strategy="enqueue", debounce_s=0)
                    for c in CHANNELS
                }
                coalescing: dict[str, Bot] = {c: connect(lane.base_url, c, fake) for c in CHANNELS}
                block = 0
                log("warm-up: 100 posts per webhook and to the turns API")
                for mode in answer_modes:
                    block += 1
                    answers_run(rig, plain, mode, block, 100, args.concurrency)
                roles = {"api": pids["api"], "worker": pids["worker"]}
                with Profiler("channels", roles, enabled=args.profile) as profiler:
                    for r in range(args.rounds):
                        for conns, count in levels:
                            for mode in rotated(answer_modes, r):
                                block += 1
                                res = answers_run(rig, plain, mode, block, count, conns)
                                log(
                                    f"round {r + 1}/{args.rounds} webhook answers, {mode}, "
                                    f"{conns} conn.: {res['per_s']:.0f}/s, p50 "
                                    f"{res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms; "
                                    f"drained in {res['drained_s']:.1f} s"
                                )
                                answers[conns][mode].append(res)
                        for mode in rotated(trip_modes, r):
                            block += 1
                            bots = {"channels": plain, "coalesce": coalescing}.get(mode)
                            res = trips_run(rig, bots, block, args)
                            log(
                                f"round {r + 1}/{args.rounds} round trips, {mode}: "
                                f"p50 {res['p50_s']:.3f} s, p99 {res['p99_s']:.3f} s, "
                                f"{res['per_s']:.1f} replies/s; problems {res['problems']}"
                            )
                            trips[mode].append(res)
                log("the final count: every reply once, 3 s after the last")
                time.sleep(3)
                _, everything = platforms.sent(0)
    finally:
        platforms.stop()
        model.stop()

    got = Counter((row[0], row[1]) for row in everything)
    owed = rig.expected
    final = {
        "replies_owed": sum(owed.values()),
        "replies_sent": len(everything),
        "chats": len(owed),
        "chats_exact": sum(1 for k, n in owed.items() if got.get(k) == n),
        "chats_short": sum(1 for k, n in owed.items() if got.get(k, 0) < n),
        "chats_extra": sum(1 for k, n in owed.items() if got.get(k, 0) > n),
        "stray_chats": sum(1 for k in got if k not in owed),
    }
    n = args.rounds
    names = {"baseline": "baseline: `POST …/turns`, no wait"} | {
        c: f"{c} webhook" for c in CHANNELS
    }
    for conns, count in levels:
        med = {m: medians([floats(x) for x in rs]) for m, rs in answers[conns].items()}
        base = med["baseline"]
        report.table(
            f"Webhook answers: {conns} connection{'s' if conns > 1 else ''}, {count} messages "
            f"per run, each from a chat of its own; median of {n} rounds",
            ["", "requests/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 / baseline",
             "p99 / baseline", "Slack's 3 s / p99", "API CPU µs / request",
             "worker CPU ms / message", "Redis CPU ms / message", "all done /s"],
            [[names[m], x["per_s"], x["p50_ms"], x["p90_ms"], x["p99_ms"], x["max_ms"],
              ratio(x["p50_ms"], base["p50_ms"]), ratio(x["p99_ms"], base["p99_ms"]),
              ratio(SLACK_DEADLINE_MS, x["p99_ms"]), x["api_cpu_us"], x["worker_cpu_ms"],
              x["redis_cpu_ms"], x["done_per_s"]]
             for m, x in med.items()],
        )  # fmt: skip
        if conns == args.concurrency:
            for c in CHANNELS:
                what = f"{c} webhook answer p99, {conns} connections, ≤ Slack's 3 s (ms)"
                report.goal(what, med[c]["p99_ms"], SLACK_DEADLINE_MS, higher_is_better=False)
    report.table(
        f"Webhook answer checks, all {n} rounds, both levels",
        ["", "requests", "answered 2xx", "model calls completed", "replies",
         "chats with one reply"],
        [[names[m], *(sum(x[k] for c in answers for x in answers[c][m])
                      for k in ("requests", "answered_2xx", "model_calls")),
          *(("—", "—") if m == "baseline" else
            (sum(x[k] for c in answers for x in answers[c][m])
             for k in ("replies", "chats_one_reply")))]
         for m in answer_modes],
    )  # fmt: skip
    tmed = {m: medians([floats(x) for x in rs]) for m, rs in trips.items()}
    tbase = tmed["baseline"]
    model_s = args.tokens * args.interval
    rows: list[list[Any]] = []
    labels = {
        "baseline": "baseline: `POST …/turns?wait=60`, send → answer read",
        "channels": "4 channels (enqueue, debounce 0), webhook sent → reply at the platform",
        "coalesce": "4 channels, default `coalesce` 1.5 s debounce",
    }
    for m in trip_modes:
        x = tmed[m]
        rows.append([labels[m], x["messages"], x["p50_s"], x["p90_s"], x["p99_s"], x["max_s"],
                     (x["p50_s"] - model_s) * 1000, (x["p99_s"] - model_s) * 1000,
                     (x["p50_s"] - tbase["p50_s"]) * 1000, ratio(x["p50_s"], tbase["p50_s"]),
                     x["per_s"], x["outbox_max"], x["outbox_mean"]])  # fmt: skip
        if m == "channels":
            for c in CHANNELS:
                rows.append([f"… {c}", x["messages"] / len(CHANNELS), x[f"{c}_p50_s"], "",
                             x[f"{c}_p99_s"], "", (x[f"{c}_p50_s"] - model_s) * 1000,
                             (x[f"{c}_p99_s"] - model_s) * 1000,
                             (x[f"{c}_p50_s"] - tbase["p50_s"]) * 1000,
                             ratio(x[f"{c}_p50_s"], tbase["p50_s"]), "", "", ""])  # fmt: skip
    report.table(
        f"Round trips: {args.chats} chats (a quarter per platform) starting within "
        f"{args.spread:g} s, {args.per_chat} messages each, each sent once the previous "
        f"reply arrived; replies of {args.tokens} tokens {args.interval:g} s apart "
        f"({model_s:g} s); median of {n} rounds",
        ["", "messages", "p50 s", "p90 s", "p99 s", "max s", "p50 over the model's time ms",
         "p99 over ms", "p50 − baseline ms", "p50 / baseline", "replies/s",
         "sessions in the outbox index, max", "mean"],
        rows,
    )  # fmt: skip
    stage_names = [
        ("accept", "sent → turn accepted (`created_at`)"),
        ("queue", "accepted → started (`started_at`)"),
        ("model", "started → committed (`finished_at`)"),
        ("deliver", "committed → reply at the platform / answer read"),
    ]
    report.table(
        f"Where a round trip's time goes (turn timestamps, ms resolution); median of {n} rounds",
        ["", *(f"{m} p50 ms" for m in trip_modes), *(f"{m} p99 ms" for m in trip_modes)],
        [[label, *(tmed[m][f"{s}_p50_ms"] for m in trip_modes),
          *(tmed[m][f"{s}_p99_ms"] for m in trip_modes)]
         for s, label in stage_names]
        + [["webhook / POST answered", *(tmed[m]["answer_p50_ms"] for m in trip_modes),
            *(tmed[m]["answer_p99_ms"] for m in trip_modes)]],
    )  # fmt: skip
    problems: Counter[str] = Counter()
    for runs in trips.values():
        for run in runs:
            problems.update(run["problems"])
    report.table(
        f"Checks, all {n} rounds and the warm-up, 3 s after the last reply",
        ["replies owed", "replies sent", "chats", "chats with exactly theirs", "short",
         "extra", "replies to chats that sent nothing", "round-trip problems"],
        [[final["replies_owed"], final["replies_sent"], final["chats"], final["chats_exact"],
          final["chats_short"], final["chats_extra"], final["stray_chats"],
          ", ".join(f"{k}: {v}" for k, v in problems.items()) or "none"]],
    )  # fmt: skip
    report.data = {
        "answers": answers,
        "trips": trips,
        "final": final,
        "profiles": profiler.summaries,
    }
    report.finish()


if __name__ == "__main__":
    main()
