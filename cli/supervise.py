"""Child processes chatlane starts itself, and stops by pid (never by name)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


def api_command(host: str, port: int, *extra: str) -> list[str]:
    """``python -m api.server`` (uvicorn with the HTTP limits of ``api.http11``) under this
    interpreter; ``extra``: ``--workers N``, ``--log-level LEVEL``."""
    return [sys.executable, "-m", "api.server", "--host", host, "--port", str(port),
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


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so a supervisor
    killed outright leaves no orphans."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A started process whose output is copied, line by line, to ``out`` under a name,
    noting when a line holds ``ready_marker``."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        out: IO[str],
        *,
        ready_marker: str | None = None,
        session: bool = False,
    ) -> None:
        """``session``: in a process group of its own (a terminal's Ctrl-C reaches only
        the supervisor, which stops children in order), ended with its parent."""
        self.name = name
        self.ready = threading.Event()
        self._marker = ready_marker
        self._out = out
        self.proc = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=session, preexec_fn=die_with_parent if session else None,
        )  # fmt: skip
        self._copier = threading.Thread(target=self._copy, name=f"{name}-output", daemon=True)
        self._copier.start()

    def _copy(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.write(f"{self.name:>6} | {line}")
            self._out.flush()
            if self._marker is not None and self._marker in line:
                self.ready.set()

    def flush(self, timeout_s: float = 2.0) -> None:
        """Wait for the last of its output (after it exited)."""
        self._copier.join(timeout_s)


def stop_all(
    procs: Sequence[subprocess.Popen[bytes] | subprocess.Popen[str]], grace_s: float = 20
) -> None:
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


def answers_ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for_ready(
    base_url: str,
    procs: Sequence[subprocess.Popen[bytes] | subprocess.Popen[str]],
    timeout_s: float = 60,
) -> None:
    """Return once ``GET {base_url}/readyz`` answers 200, while every process stays up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise StartupFailed("a process exited during start-up")
        if answers_ready(base_url):
            return
        time.sleep(0.1)
    raise StartupFailed(f"{base_url} did not become ready in {timeout_s:.0f} s")
