"""The ``chatlane`` command: ``up`` (everything on one machine), ``api``, ``worker``, and
``keys`` (the API keys that map callers to tenants)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click
import redis

from cli.channels import channels
from cli.keys import keys
from cli.redis_server import ManagedRedis, cannot_stand_in, free_port, port_is_free
from cli.supervise import Child, answers_ready, api_command, stop_all, worker_command
from shared.addresses import is_loopback
from shared.apikeys import with_ring
from shared.redis import eviction_problem, masked, probe_client
from shared.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
START_TIMEOUT_S = 90.0


def say(message: str, *, err: bool = False) -> None:
    click.echo(f"chatlane: {message}", err=err)


def _database(url: str) -> str:
    path = urlsplit(url).path.strip("/")
    return path or "0"


def _probe(url: str) -> tuple[str, str]:
    """What answers at ``url``: ``("redis", policy)``, ``("other", why)`` or ``("none", why)``."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1):
            pass
    except OSError as exc:
        return "none", str(exc)
    client = probe_client(url, timeout_s=2)
    try:
        client.ping()
        try:
            policy = str(client.info("memory").get("maxmemory_policy", "noeviction"))
        except redis.RedisError:
            policy = "noeviction"  # INFO refused: the API and workers check again
        return "redis", policy
    except (redis.RedisError, OSError) as exc:
        return "other", f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


def _keys_configured(settings: Settings, url: str) -> bool:
    try:
        return with_ring(url, settings.key_prefix, lambda ring: ring.configured())
    except Exception:
        return False


def open_to_the_network(host: str, settings: Settings, url: str) -> str | None:
    """Why serving on ``host`` would let anyone in (None when it would not): a non-loopback
    address with no API key made and ``CHATLANE_AUTH`` not set to ``open`` or ``keys``."""
    if is_loopback(host) or settings.auth != "auto" or _keys_configured(settings, url):
        return None
    return (
        f"refusing to listen on {host}: no API keys exist, and without keys chatlane serves "
        "loopback clients only. Make one first (`chatlane keys create --tenant NAME`), or "
        "set CHATLANE_AUTH=open to serve everyone as one anonymous tenant (only behind "
        "something else that authenticates), or CHATLANE_AUTH=keys."
    )


def run_up(host: str, port: int, data_dir: Path) -> int:
    settings = Settings()
    env = dict(os.environ)
    url = settings.redis_url
    managed: ManagedRedis | None = None
    found, detail = _probe(url)
    if found == "other":
        say(f"something answers at {masked(url)} but not as a usable Redis ({detail})", err=True)
        return 2
    if found == "none":
        if urlsplit(url).hostname not in LOOPBACK:
            # A Redis elsewhere is expected to be running; starting one here would hide that.
            say(f"no Redis answers at {masked(url)} ({detail})", err=True)
            return 2
        if (reason := cannot_stand_in(url)) is not None:
            say(f"no Redis answers at {masked(url)} ({detail}), and {reason}: start it", err=True)
            return 2
        wanted = urlsplit(url).port or 6379
        redis_dir = data_dir / "redis"
        managed = ManagedRedis(wanted if port_is_free(wanted) else free_port(), data_dir=redis_dir)
        managed.start()
        url = _with_port(url, managed.port)
        env["CHATLANE_REDIS_URL"] = url
        say(
            f"Redis: started redis-server (pid {managed.proc.pid if managed.proc else '?'}) "
            f"on {url}, database {_database(url)}; data kept in {redis_dir.resolve()} "
            "(append-only file)"
        )
    else:
        say(f"Redis: using the server already running at {masked(url)}, database {_database(url)}")
        problem = None if settings.allow_eviction else eviction_problem(detail, url)
        if problem is not None:
            say(problem, err=True)
            return 2

    refused = open_to_the_network(host, settings, url)
    if refused is not None:
        say(refused, err=True)
        if managed is not None:
            managed.stop()
        return 2

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: list[Child] = []
    try:
        children.append(
            Child("worker", worker_command(), env, sys.stdout, ready_marker=" ready.", session=True)
        )
        children.append(Child("api", api_command(host, port), env, sys.stdout, session=True))
        base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        code = _wait_until_up(children, base, managed, lambda: stopping)
        if code is not None:
            return code
        say(
            f"up at {base}  (model: {settings.model}; Ctrl-C stops everything)\n"
            f"  curl -s -X POST '{base}/v1/sessions/demo/turns?wait=10' \\\n"
            f"       -H 'content-type: application/json' -d '{{\"content\": \"hello\"}}'\n"
            f"  chat page: {base}/    API docs: {base}/docs"
        )
        while not stopping:
            code = _check(children, managed)
            if code is not None:
                return code
            time.sleep(0.2)
        return 0
    finally:
        stop_all([child.proc for child in children])
        for child in children:
            child.flush()
        if managed is not None:
            managed.stop()
        say("stopped")


def _check(children: list[Child], managed: ManagedRedis | None) -> int | None:
    """None while everything runs; else say what stopped and return the exit code."""
    if managed is not None and (code := managed.exited()) is not None:
        say(f"the managed redis-server exited (code {code}); stopping everything", err=True)
        return 1
    for child in children:
        if (code := child.proc.poll()) is not None:
            child.flush()
            say(f"the {child.name} exited (code {code}); stopping everything", err=True)
            return 1
    return None


def _wait_until_up(
    children: list[Child],
    base: str,
    managed: ManagedRedis | None,
    stopping: Callable[[], bool],
) -> int | None:
    """Wait for the worker's ready line and the API's ``/readyz``; None once both are up."""
    deadline = time.monotonic() + START_TIMEOUT_S
    worker = next(c for c in children if c.name == "worker")
    while not (worker.ready.is_set() and answers_ready(base)):
        if stopping():
            return 0
        code = _check(children, managed)
        if code is not None:
            return code
        if time.monotonic() > deadline:
            say(f"not up after {START_TIMEOUT_S:.0f} s; stopping everything", err=True)
            return 1
        time.sleep(0.1)
    return None


CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="chatlane", prog_name="chatlane")
def main() -> None:
    """Queue-based workers for LangChain chat turns.

    Settings come from CHATLANE_* environment variables (see the README).
    """


@main.command()
@click.option("--host", default="127.0.0.1", help="Address the API listens on.")
@click.option("--port", default=8000, type=click.IntRange(1, 65535), help="Port of the API.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where a managed Redis keeps its data.  [default: CHATLANE_DATA_DIR, else ./.chatlane]",
)
def up(host: str, port: int, data_dir: Path | None) -> None:
    """Start the API, a worker and, when no Redis answers at CHATLANE_REDIS_URL on this
    machine, a redis-server that keeps its data in the data directory.

    Prints which Redis it uses. Ctrl-C stops everything it started.
    """
    sys.exit(run_up(host, port, data_dir or Settings().data_dir))


@main.command()
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option("--port", default=8000, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--workers", default=1, type=click.IntRange(1), help="API worker processes.")
def api(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API (python -m api.server: uvicorn's h11 server with chatlane's limits)."""
    settings = Settings()
    refused = open_to_the_network(host, settings, settings.redis_url)
    if refused is not None:
        say(refused, err=True)
        sys.exit(2)
    args = api_command(host, port, "--workers", str(workers))
    os.execv(args[0], args)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED, metavar="[CELERY ARGS]...")
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a worker (celery -A worker.app worker).

    Every argument goes to `celery worker` as it is, e.g.
    `chatlane worker --concurrency 64 -n w1@%h`; `chatlane worker -- --help` shows
    Celery's own options.
    """
    args = worker_command(*(a for a in celery_args if a != "--"))
    os.execv(args[0], args)


main.add_command(keys)
main.add_command(channels)


if __name__ == "__main__":
    main(prog_name="chatlane")
