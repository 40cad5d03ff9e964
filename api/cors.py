"""Cross-origin access: none unless ``CHATLANE_CORS_ORIGINS`` names origins.

With no CORS headers a browser lets no other origin read an answer, and since every body
must be ``application/json`` (``api.guards``), no page can write without a preflight
either. Named origins may call the API from a browser with an API key in a header;
cookies are never honoured (no credentials mode).
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from api.problems import problem
from shared.errors import ConfigurationError

_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|\*")
METHODS = ("GET", "POST", "PUT", "DELETE")
HEADERS = ("content-type", "authorization", "x-api-key", "idempotency-key", "last-event-id")
EXPOSED = ("location", "retry-after", "idempotent-replayed")


def origins(setting: str) -> list[str]:
    """The comma-separated origins of ``CHATLANE_CORS_ORIGINS``; raises
    ``ConfigurationError`` for anything that is not ``scheme://host[:port]`` or ``*``."""
    found = [o.strip().rstrip("/") for o in setting.split(",") if o.strip()]
    for origin in found:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigurationError(f"CHATLANE_CORS_ORIGINS: {origin!r} is not an origin")
    return found


class ProblemCORS(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as a problem."""

    def __init__(self, app: ASGIApp, allow_origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=allow_origins,
            allow_methods=METHODS,
            allow_headers=HEADERS,
            expose_headers=EXPOSED,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        kept = {k: v for k, v in response.headers.items() if not k.lower().startswith("content-")}
        return problem(
            response.status_code,
            "CORS preflight refused",
            bytes(response.body).decode(),
            kind="cors-refused",
            headers=kept,
        )
