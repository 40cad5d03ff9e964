"""Plumbing shared by the benchmarks: private servers, baseline workers, /proc accounting,
statistics over rounds, a time bound, and the report (a markdown table plus JSON).

Every benchmark starts its own ``redis-server`` (``ManagedRedis``) on a free loopback
port, its own processes (``tests.support.cluster.Cluster`` for chatlane, ``BaselineCluster``
for raw Celery), and stops all of them by pid on the way out, including on a timeout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celery
import redis

from shared.redis_server import find_binary
from tests.support.cluster import ROOT, Cluster

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def medians(rounds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per metric, the median over rounds (each round is one full measurement)."""
    keys = rounds[0].keys()
    return {k: float(statistics.median(r[k] for r in rounds)) for k in keys}


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """``VmHWM`` (peak resident set) and ``VmRSS`` (resident now) in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            out[name] = int(value.split()[0])
    return out


class CpuMeter:
    """CPU seconds consumed by a set of processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._t0 = 0.0
        self._cpu0 = 0.0
        self.wall_s = 0.0
        self.cpu_s = 0.0

    def _cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def start(self) -> CpuMeter:
        self._cpu0 = self._cpu()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> CpuMeter:
        self.cpu_s = self._cpu() - self._cpu0
        self.wall_s = time.monotonic() - self._t0
        return self


# --------------------------------------------------------------------------- processes


class BaselineCluster(Cluster):
    """Raw Celery workers of ``benchmarks.celery_baseline``, started exactly like chatlane's.

    Same interpreter, command line flags (``-l info --without-gossip --without-mingle``),
    environment and readiness check as ``tests.support.cluster.Cluster``; only ``-A``
    differs. No API process.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["api"] = False
        super().__init__(*args, **kwargs)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "benchmarks.celery_baseline", "worker",
                 "-n", f"{name}@%h", "-l", "info", "--without-gossip", "--without-mingle"],
                cwd=ROOT, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.worker_procs.append(proc)
        self._wait_for_log(self.logs / f"{name}.log", b" ready.", proc)
        return proc


def logs_dir(name: str) -> Path:
    """Where this run's process logs go (``benchmarks/results/logs/<name>``, git-ignored)."""
    path = RESULTS_DIR / "logs" / name
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.log"):
        old.unlink()
    return path


def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.005, what: str
) -> float:
    """Poll until ``predicate()`` holds; returns the ``time.time()`` it first held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def broker_idle(client: redis.Redis, queue: str) -> Callable[[], bool]:
    """True when ``queue`` is empty and kombu's unacked hash is empty: with ``acks_late`` every
    delivered task has then finished. Checked twice, 5 ms apart, to step over the instant
    between a worker's BRPOP and its unacked bookkeeping."""

    def once() -> bool:
        pipe = client.pipeline(transaction=False)
        pipe.llen(queue)
        pipe.hlen("unacked")
        return not any(pipe.execute())

    def check() -> bool:
        if not once():
            return False
        time.sleep(0.005)
        return once()

    return check


# --------------------------------------------------------------------------- run wrapper


def add_common_args(parser: argparse.ArgumentParser, *, rounds: int = 3, max_s: int) -> None:
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds per measurement (>=3)")
    parser.add_argument(
        "--max-seconds", type=int, default=max_s, help="hard time bound; everything is stopped"
    )


@contextmanager
def time_bound(max_seconds: int) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread after ``max_seconds`` (SIGALRM), and turn
    SIGTERM into ``SystemExit``, so every ``with`` block stops what it started."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark exceeded --max-seconds={max_seconds}")

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old_alarm = signal.signal(signal.SIGALRM, on_alarm)
    old_term = signal.signal(signal.SIGTERM, on_term)
    signal.alarm(max_seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    redis_version = subprocess.run(
        [find_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "redis_server": redis_version.split(" sha=")[0],
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Report:
    """What a benchmark prints and saves to ``benchmarks/results/<name>.json``."""

    name: str
    args: dict[str, Any]
    started: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    machine: dict[str, Any] = field(default_factory=machine)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    goals: list[dict[str, Any]] = field(default_factory=list)

    def table(self, title: str, headers: list[str], rows: list[list[Any]]) -> None:
        self.tables.append((title, headers, rows))

    def goal(self, what: str, measured: float, target: float, *, higher_is_better: bool) -> None:
        met = measured >= target if higher_is_better else measured <= target
        self.goals.append({"goal": what, "measured": measured, "target": target, "met": met})

    def command(self) -> str:
        return " ".join([".venv/bin/python -m", f"benchmarks.{self.name}", *sys.argv[1:]])

    def render(self) -> str:
        parts = [f"## {self.name}", "", f"`{self.command()}` — {self.started}", ""]
        for title, headers, rows in self.tables:
            parts += [f"**{title}**", "", markdown_table(headers, rows), ""]
        if self.goals:
            rows = [
                [g["goal"], fmt(g["measured"]), fmt(g["target"]), "met" if g["met"] else "MISSED"]
                for g in self.goals
            ]
            parts += ["**Goals**", "", markdown_table(["goal", "measured", "target", ""], rows), ""]
        return "\n".join(parts)

    def save(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        payload = {
            "name": self.name,
            "command": self.command(),
            "started": self.started,
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "args": self.args,
            "machine": {**self.machine, "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3]},
            "tables": [{"title": t, "headers": h, "rows": r} for t, h, r in self.tables],
            "goals": self.goals,
            "data": self.data,
        }
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        return path

    def finish(self) -> None:
        print(self.render())
        log(f"results written to {self.save().relative_to(ROOT)}")


# --------------------------------------------------------------------------- HTTP


class KeepAlive:
    """One keep-alive HTTP/1.1 connection (``http.client``): far less client CPU than httpx,
    which on this 2-core machine would otherwise compete with the server it measures."""

    def __init__(self, port: int, timeout_s: float = 30.0) -> None:
        import http.client

        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self._conn.request(method, path, body=body, headers=headers)
        response = self._conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self._conn.close()


def redis_pid(client: redis.Redis) -> int:
    return int(client.info("server")["process_id"])
