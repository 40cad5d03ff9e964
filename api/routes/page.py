"""``/``: a small chat page (plain HTML, one script, one style sheet) that uses only the
public HTTP API. Not part of the API: kept out of the OpenAPI schema."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, HTTPException, Request, Response

router = APIRouter(include_in_schema=False)

# The only files served: nothing else under the package can be reached by name.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}

# The page loads nothing but its own files and talks only to this origin.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@cache
def asset(name: str) -> tuple[bytes, str]:
    """The file's bytes and a strong ETag (read once per process)."""
    body = files("api").joinpath("static", name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def serve(name: str, request: Request) -> Response:
    body, etag = asset(name)
    headers = {
        "etag": etag,
        "cache-control": "no-cache",  # revalidate: a new version is seen at once
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }
    if name == "index.html":
        headers["content-security-policy"] = PAGE_CSP
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=ASSETS[name], headers=headers)


@router.get("/")
def index(request: Request) -> Response:
    """The chat page."""
    return serve("index.html", request)


@router.get("/static/{name}")
def static(name: str, request: Request) -> Response:
    """The page's script and style sheet."""
    if name not in ASSETS:
        raise HTTPException(404, f"No static file {name!r}.")
    return serve(name, request)
