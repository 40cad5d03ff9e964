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

from cli.redis_server import find_binary
from cli.supervise import spawn, stop_all, wait_for_log, worker_command
from shared.settings import Settings
from tests.support.cluster import ROOT, settings_env

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


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads included."""
    return sum(cpu_times(pid))


def memory_kib(pid: int) -> dict[str, int]:
    """``VmHWM`` (peak resident set) and ``VmRSS`` (resident now) in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            out[name] = int(value.split()[0])
    return out


class CpuMeter:
    """CPU seconds (user, system) used by a set of processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._t0 = 0.0
        self._at0 = (0.0, 0.0)
        self.wall_s = 0.0
        self.user_s = 0.0
        self.sys_s = 0.0

    def _times(self) -> tuple[float, float]:
        times = [cpu_times(p) for p in self.pids]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def start(self) -> CpuMeter:
        self._at0 = self._times()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> CpuMeter:
        user, system = self._times()
        self.user_s, self.sys_s = user - self._at0[0], system - self._at0[1]
        self.wall_s = time.monotonic() - self._t0
        return self


# --------------------------------------------------------------------------- processes


def baseline_command(*extra: str) -> list[str]:
    """chatlane's worker command line (``cli.supervise.worker_command``) with only the app
    swapped for ``benchmarks.celery_baseline``: same interpreter, flags and log level."""
    cmd = worker_command(*extra)
    cmd[cmd.index("worker.app")] = "benchmarks.celery_baseline"
    return cmd


class BaselineCluster:
    """``workers`` raw Celery worker processes (``benchmarks.celery_baseline``).

    Same environment as ``tests.support.cluster.Cluster`` builds for chatlane's workers
    (``settings_env`` + ``CHATLANE_WORKER_CONCURRENCY``); each must list the ``bench.*``
    tasks when it boots, so a baseline can never silently be some other app.
    """

    def __init__(self, settings: Settings, logs: Path, *, workers: int, concurrency: int) -> None:
        self.logs = logs
        self.workers = workers
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self._env = {
            **os.environ,
            **settings_env(settings),
            "CHATLANE_WORKER_CONCURRENCY": str(concurrency),
            "PYTHONUNBUFFERED": "1",
        }

    def log_paths(self) -> list[Path]:
        return [self.logs / f"base{i + 1}.log" for i in range(self.workers)]

    def __enter__(self) -> BaselineCluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            for i, path in enumerate(self.log_paths()):
                cmd = baseline_command("-n", f"base{i + 1}@%h")
                self.worker_procs.append(spawn(cmd, self._env, log=path, cwd=ROOT))
            for proc, path in zip(self.worker_procs, self.log_paths(), strict=True):
                wait_for_log(path, b" ready.", proc)
                if b". bench.noop" not in path.read_bytes():
                    raise RuntimeError(f"{path.name}: the baseline worker lacks bench.* tasks")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all(self.worker_procs, grace_s=15)


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


# --------------------------------------------------------------------------- profiles

PY_SPY = Path(sys.executable).with_name("py-spy")


class Profiler:
    """With ``--profile``: py-spy samples the given processes while the rounds run.

    ``--gil`` keeps only samples of the thread holding the GIL, i.e. Python CPU time: in
    this VM py-spy's idle detection does not work (threads parked in ``Event.wait`` are
    sampled as active), so plain samples would mostly show waiting. Time in system calls
    (socket sends) releases the GIL and shows up in the /proc system time instead.
    Profiling costs CPU on a 2-core machine: reported numbers come from runs without it.
    Raw collapsed stacks and a summary land in ``benchmarks/results/profiles/<bench>/``.
    """

    def __init__(self, bench: str, pids: Mapping[str, int], *, enabled: bool) -> None:
        self.enabled = enabled
        self.dir = RESULTS_DIR / "profiles" / bench
        self.pids = dict(pids)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.summaries: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> Profiler:
        if not self.enabled:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        for role, pid in self.pids.items():
            self._procs[role] = subprocess.Popen(
                [
                    str(PY_SPY),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "97",
                    "--gil",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(self.dir / f"{role}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for role, proc in self._procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            path = self.dir / f"{role}.txt"
            if path.exists():
                self.summaries[role] = summarize_profile(path)
                lines = [f"{v:5.1f}%  {k}" for k, v in self.summaries[role]["self"].items()]
                lines += ["", "inclusive:"]
                lines += [f"{v:5.1f}%  {k}" for k, v in self.summaries[role]["inclusive"].items()]
                (self.dir / f"{role}.summary.txt").write_text("\n".join(lines) + "\n")
        if self._procs:
            log(f"profiles in {self.dir.relative_to(ROOT)}")


def profile_samples(path: Path) -> Iterator[tuple[str, int]]:
    """``(stack, count)`` per line of py-spy's raw output. A frame name py-spy misread (it
    can pick up a docstring, newlines included) spans lines: they are joined until one ends
    in the sample count."""
    pending = ""
    for line in path.read_text().splitlines():
        pending += line
        stack, _, count_text = pending.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack, int(count_text)
            pending = ""


def summarize_profile(path: Path, top: int = 40) -> dict[str, Any]:
    """Self and inclusive shares (percent of GIL-holding samples) per function."""
    selfs: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for stack, count in profile_samples(path):
        total += count
        frames = [_function(f) for f in stack.split(";")]
        selfs[frames[-1]] = selfs.get(frames[-1], 0) + count
        for name in set(frames):
            incl[name] = incl.get(name, 0) + count

    def best(counts: dict[str, int]) -> dict[str, float]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return {k: round(100 * v / total, 1) for k, v in ranked}

    return {"samples": total, "self": best(selfs), "inclusive": best(incl)}


def attribute(
    paths: Sequence[Path], rules: Sequence[tuple[str, Sequence[str]]]
) -> dict[str, float]:
    """Share (percent) of profile samples per component: a stack belongs to the first rule
    all of whose substrings it contains; the rest is ``other``."""
    counts = {label: 0 for label, _ in rules} | {"other": 0}
    total = 0
    for path in paths:
        for stack, count in profile_samples(path):
            total += count
            label = next((lb for lb, needles in rules if all(n in stack for n in needles)), "other")
            counts[label] += count
    return {label: 100 * n / max(total, 1) for label, n in counts.items()}


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (path/file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


# --------------------------------------------------------------------------- run wrapper


def add_common_args(parser: argparse.ArgumentParser, *, rounds: int = 3, max_s: int) -> None:
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds per measurement (>=3)")
    parser.add_argument(
        "--max-seconds", type=int, default=max_s, help="hard time bound; everything is stopped"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy (--gil) the chatlane processes during the rounds (skews the numbers)",
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

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "api", "worker", "shared", "cli")
    return {
        "commit": git("rev-parse", "--short", "HEAD")
        + (" + uncommitted product changes" if dirty else ""),
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
    started: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
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
        when = f"{self.started}, commit {self.machine['commit']}"
        parts = [f"## {self.name}", "", f"`{self.command()}` — {when}", ""]
        if int(self.args.get("rounds", 3)) < 3:
            parts += ["**Fewer than 3 rounds: indicative only.**", ""]
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
            "machine": {
                **self.machine,
                "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
            },
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


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN (printed ``n/a``) when the denominator is 0."""
    return numerator / denominator if denominator else math.nan
