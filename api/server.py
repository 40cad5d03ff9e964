"""``python -m api.server``: serve ``api.main:app`` the way it is deployed.

uvicorn with the h11 protocol of ``api.http11`` (bounded, timed heads; parser errors as
problems; a connection cap), the keep-alive idle timeout, and the limits read from the
settings. ``chatlane up``, ``chatlane api`` and the container start the API this way;
``uvicorn api.main:app`` still serves, with the app's own guards only.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn
from uvicorn.config import LOG_LEVELS
from uvicorn.supervisors import Multiprocess

from api.http11 import HardenedConfig, HttpLimits
from shared.settings import Settings

APP = "api.main:app"


def limits(settings: Settings) -> HttpLimits:
    return HttpLimits(
        head_timeout_s=settings.http_head_timeout_s,
        max_head_bytes=settings.http_max_head_bytes,
        max_body_bytes=settings.max_body_bytes,
        max_connections=settings.http_max_connections,
    )


def config(
    settings: Settings,
    host: str,
    port: int,
    *,
    workers: int = 1,
    log_level: str | None = None,
    access_log: bool = True,
) -> HardenedConfig:
    return HardenedConfig(
        APP,
        limits=limits(settings),
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        timeout_keep_alive=settings.http_idle_timeout_s,
    )


def serve(config: HardenedConfig) -> None:
    """Run until stopped (SIGINT / SIGTERM), in ``config.workers`` processes."""
    server = uvicorn.Server(config)
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
        if not server.started:
            raise SystemExit(3)  # uvicorn's own exit code for a failed start


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m api.server", description="Serve the chatlane HTTP API."
    )
    ap.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    ap.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    ap.add_argument("--workers", type=int, default=1, help="Worker processes.")
    ap.add_argument("--log-level", choices=sorted(LOG_LEVELS), default=None)
    ap.add_argument("--no-access-log", dest="access_log", action="store_false")
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.workers < 1:
        parser().error("--workers must be at least 1")
    serve(
        config(
            Settings(),
            args.host,
            args.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=args.access_log,
        )
    )


if __name__ == "__main__":
    main()
