"""Private redis-servers that want a password, an ACL user or TLS: each started from a
config file of its own on a free loopback port, and stopped by its pid.

The secrets go in the config file, not on the command line, so they never show in a
process listing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cli.redis_server import find_binary, free_port
from shared.redis import answers


@dataclass(frozen=True)
class Certs:
    """A throwaway CA and a server certificate it signed for ``127.0.0.1`` and ``localhost``."""

    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path) -> Certs:
    """Generate ``Certs`` in ``directory`` with the ``openssl`` command (valid for a day)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=chatlane test CA", "-keyout", ca_key, "-out", ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", key, "-out", csr],
        ["x509", "-req", "-days", "1", "-in", csr, "-CA", ca, "-CAkey", ca_key,
         "-CAcreateserial", "-extfile", extensions, "-out", cert],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return Certs(ca=ca, cert=cert, key=key)


class PrivateRedis:
    """A ``redis-server`` run from ``config`` lines; ``url`` is how a client reaches it
    (``{port}`` in it is filled in)."""

    def __init__(self, directory: Path, config: Sequence[str], url: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = url.format(port=self.port)
        self._config = [
            "bind 127.0.0.1",
            f"dir {directory}",
            'save ""',
            "appendonly no",
            "maxmemory-policy noeviction",
            *(line.format(port=self.port) for line in config),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> PrivateRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        conf.write_text("\n".join(self._config) + "\n")
        conf.chmod(0o600)
        log = (self.directory / "redis.log").open("wb")
        with log:
            self.proc = subprocess.Popen(
                [find_binary(), str(conf)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not answers(self.url, timeout_s=0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = (self.directory / "redis.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"redis-server did not answer at port {self.port}:\n{output}")
            time.sleep(0.05)
        return self

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The server stopped (SIGSTOP) for the duration: connections hang, none is refused."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def with_password(directory: Path, password: str) -> PrivateRedis:
    """The default user needs ``password`` (``requirepass``)."""
    return PrivateRedis(
        directory,
        ["port {port}", f"requirepass {password}"],
        f"redis://:{quote(password, safe='')}@127.0.0.1:{{port}}/0",
    )


def with_acl_user(directory: Path, user: str, password: str) -> PrivateRedis:
    """Only ``user`` may connect, with ``password``; the default user is off, and ``user``
    may not flush or list keys."""
    return PrivateRedis(
        directory,
        [
            "port {port}",
            "user default off",
            f"user {user} on >{password} ~* &* +@all -flushall -flushdb -keys",
        ],
        f"redis://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{{port}}/0",
    )


def with_tls(directory: Path, password: str, certs: Certs, query: str) -> PrivateRedis:
    """TLS only (no plain port, clients show no certificate), and ``requirepass``; ``query``
    ends the ``rediss://`` URL (e.g. ``?ssl_ca_certs=...``)."""
    return PrivateRedis(
        directory,
        [
            "port 0",
            "tls-port {port}",
            f"tls-cert-file {certs.cert}",
            f"tls-key-file {certs.key}",
            f"tls-ca-cert-file {certs.ca}",
            "tls-auth-clients no",
            f"requirepass {password}",
        ],
        f"rediss://:{quote(password, safe='')}@127.0.0.1:{{port}}/0"
        + query.replace("{", "{{").replace("}", "}}"),
    )
