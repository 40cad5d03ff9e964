"""Child processes chatlane starts itself, and stops by pid (never by name)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
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


class StartupFailed(RuntimeError):
    """A started process exited, or did not become ready in time."""


def wait_for_log(
    path: Path, marker: bytes, proc: subprocess.Popen[bytes], timeout_s: float = 60
) -> None:
    """Return once ``proc``'s log at ``path`` contains ``marker`` (e.g. Celery's " ready.")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if marker in path.read_bytes():
            return
        if proc.poll() is not None:
            raise StartupFailed(f"{path.name} exited early:\n{path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise StartupFailed(f"{path.name} never became ready:\n{path.read_text()[-3000:]}")


def wait_for_ready(
    base_url: str, procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 60
) -> None:
    """Return once ``GET {base_url}/readyz`` answers 200, while every process stays up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise StartupFailed("a process exited during start-up")
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise StartupFailed(f"{base_url} did not become ready in {timeout_s:.0f} s")
