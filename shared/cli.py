"""The ``chatlane`` command: ``up`` (everything), ``api``, ``worker``.

``chatlane up`` runs the whole system on one machine: a worker, the API and, when no
Redis answers at ``CHATLANE_REDIS_URL``, a ``redis-server`` it starts and stops itself.
Children are started by pid and stopped by pid on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from shared.processes import (
    StartupFailed,
    api_command,
    spawn,
    stop_all,
    wait_for_ready,
    worker_command,
)
from shared.redis import answers
from shared.redis_server import ManagedRedis, free_port
from shared.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _managed_redis_port(url: str) -> int:
    """The port of ``url`` when it is free on this machine, else any free port."""
    port = urlsplit(url).port
    if port:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass
    return free_port()


def up(host: str, port: int) -> int:
    settings = Settings()
    env = dict(os.environ)
    redis_server: ManagedRedis | None = None
    if not answers(settings.redis_url):
        if urlsplit(settings.redis_url).hostname not in LOOPBACK:
            # A Redis elsewhere is expected to be running; starting one here would hide that.
            print(f"chatlane: no Redis answers at {settings.redis_url}", file=sys.stderr)
            return 2
        redis_server = ManagedRedis(_managed_redis_port(settings.redis_url)).start()
        env["CHATLANE_REDIS_URL"] = redis_server.url
        print(
            f"chatlane: no Redis answered at {settings.redis_url}; "
            f"started redis-server on {redis_server.url}",
            flush=True,
        )
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        procs.append(spawn(worker_command(), env))
        procs.append(spawn(api_command(host, port), env))
        base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        try:
            wait_for_ready(base, procs)
        except StartupFailed as failed:
            print(f"chatlane: {failed} (see the output above)", file=sys.stderr)
            return 1
        print(
            f"\nchatlane is up: {base}  (model: {settings.model}; Ctrl-C stops everything)\n"
            f"  curl -s -X POST '{base}/v1/sessions/demo/turns?wait=10' \\\n"
            f"       -H 'content-type: application/json' -d '{{\"content\": \"hello\"}}'\n"
            f"  API docs: {base}/docs\n",
            flush=True,
        )
        while not stopping:
            if any(p.poll() is not None for p in procs):
                print("chatlane: a process exited; stopping the rest", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        stop_all(procs)
        if redis_server is not None:
            redis_server.stop()
        print("chatlane: stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatlane", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="API + worker (+ a managed Redis when none answers)")
    p_up.add_argument("--host", default="127.0.0.1")
    p_up.add_argument("--port", type=int, default=8000)
    p_api = sub.add_parser("api", help="the HTTP API (uvicorn api.main:app)")
    p_api.add_argument("--host", default="127.0.0.1")
    p_api.add_argument("--port", type=int, default=8000)
    p_api.add_argument("--workers", type=int, default=1)
    sub.add_parser("worker", help="a Celery worker (extra arguments go to celery)")
    args, extra = parser.parse_known_args(argv)
    if args.command == "up":
        return up(args.host, args.port)
    if args.command == "api":
        os.execv(sys.executable, api_command(args.host, args.port, "--workers", str(args.workers)))
    os.execv(sys.executable, worker_command(*extra))
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
