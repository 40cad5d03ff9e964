"""Child processes chatlane starts itself, and stops by pid (never by name)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def api_command(host: str, port: int, *extra: str) -> list[str]:
    """``uvicorn api.main:app`` under this interpreter."""
    return [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
            "--no-access-log", *extra]  # fmt: skip


def worker_command(*extra: str) -> list[str]:
    """``celery -A worker.app worker`` under this interpreter (threads pool by default)."""
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-l", "info",
            "--without-gossip", "--without-mingle", *extra]  # fmt: skip


def spawn(
    args: Sequence[str], env: Mapping[str, str], *, log: Path | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args``; its output goes to ``log`` (else this process's own stdout/stderr)."""
    if log is None:
        return subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    with log.open("wb") as out:
        return subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def stop_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 20) -> None:
    """SIGTERM every live process, wait up to ``grace_s`` in all, then SIGKILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
