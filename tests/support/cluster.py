"""Real processes: an API (uvicorn) and Celery workers, started and stopped by pid."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from cli.redis_server import free_port
from cli.supervise import (
    StartupFailed,
    api_command,
    spawn,
    stop_all,
    wait_for_log,
    wait_for_ready,
    worker_command,
)
from shared.settings import Settings

_ALIASES = {"openai_api_key": "OPENAI_API_KEY", "openai_base_url": "OPENAI_BASE_URL"}
ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read exactly these settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if name == "openai_api_key":
            value = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        env[_ALIASES.get(name, f"CHATLANE_{name.upper()}")] = str(value)
    return env


class Cluster:
    """``workers`` Celery worker processes and ``apis`` API processes (none with
    ``api=False``), each on a free port; ``base_url`` is the first one's."""

    def __init__(
        self,
        settings: Settings,
        logs: Path,
        *,
        workers: int = 3,
        concurrency: int = 16,
        api: bool = True,
        apis: int = 1,
    ) -> None:
        self.settings = settings
        self.logs = logs
        self.workers = workers
        self.concurrency = concurrency
        self.with_api = api
        self.ports = [free_port() for _ in range(apis if api else 0)] or [free_port()]
        self.port = self.ports[0]
        self.api: subprocess.Popen[bytes] | None = None
        self.api_procs: list[subprocess.Popen[bytes]] = []
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self.worker_metrics: dict[str, str] = {}  # worker name -> its /metrics base URL
        self._env = {
            **os.environ,
            **settings_env(settings),
            "CHATLANE_WORKER_CONCURRENCY": str(concurrency),
            "PYTHONUNBUFFERED": "1",
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_urls(self) -> list[str]:
        """Every API process's address."""
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def spawn_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Start a worker named ``name``, serving its metrics on a free port of its own."""
        port = free_port()
        env = {**self._env, "CHATLANE_WORKER_METRICS_PORT": str(port)}
        proc = spawn(
            worker_command("-n", f"{name}@%h"), env, log=self.logs / f"{name}.log", cwd=ROOT
        )
        self.worker_procs.append(proc)
        self.worker_metrics[name] = f"http://127.0.0.1:{port}"
        return proc

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Start one more worker and wait until it consumes."""
        proc = self.spawn_worker(name)
        wait_for_log(self.logs / f"{name}.log", b" ready.", proc)
        return proc

    def _api_log(self, i: int) -> Path:
        return self.logs / ("api.log" if i == 0 else f"api{i + 1}.log")

    def _spawn_api(self, i: int) -> subprocess.Popen[bytes]:
        command = api_command("127.0.0.1", self.ports[i], "--log-level", "warning")
        return spawn(command, self._env, log=self._api_log(i), cwd=ROOT)

    def _api_ready(self, i: int) -> None:
        """Wait for API process ``i``; a port taken between choosing it and binding it (by
        any process's outgoing connection) is chosen again, twice at most."""
        for attempt in range(3):
            try:
                wait_for_ready(self.base_urls[i], [self.api_procs[i]])
                return
            except StartupFailed as failed:
                log = self._api_log(i).read_text(errors="replace")[-3000:]
                if attempt == 2 or "address already in use" not in log:
                    raise StartupFailed(f"{failed}:\n{log}") from failed
                stop_all([self.api_procs[i]], grace_s=1)
                self.ports[i] = free_port()
                self.api_procs[i] = self._spawn_api(i)

    def __enter__(self) -> Cluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            names = [f"w{i + 1}" for i in range(self.workers)]
            procs = [self.spawn_worker(name) for name in names]  # they boot in parallel
            if self.with_api:
                self.api_procs = [self._spawn_api(i) for i in range(len(self.ports))]
                self.api = self.api_procs[0]
            for name, proc in zip(names, procs, strict=True):
                wait_for_log(self.logs / f"{name}.log", b" ready.", proc)
            for i in range(len(self.api_procs)):
                self._api_ready(i)
            self.port = self.ports[0]
            self.api = self.api_procs[0] if self.api_procs else None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        apis = [*self.api_procs, *([self.api] if self.api not in self.api_procs else [])]
        stop_all([*self.worker_procs, *[p for p in apis if p is not None]], grace_s=15)
