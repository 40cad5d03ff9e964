"""RFC 9457 problem details: every error the API returns goes through here."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from shared.errors import (
    HistoryFull,
    IdempotencyConflict,
    MailboxFull,
    NotAuthenticated,
    RateLimited,
    SessionActive,
    SessionNotFound,
    TooManyWaiters,
    TurnNotFound,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# Problem types are identifiers (RFC 9457 §3.1.1), not pages: a URN says so.
PROBLEM_TYPE_BASE = "urn:chatlane:problem:"


# An error never costs more than the request that caused it: at most this many field
# errors are listed, each with a short location and message and never the input itself.
MAX_LISTED_ERRORS = 20
MAX_LOC_PARTS = 8
MAX_LOC_TEXT = 64
MAX_TEXT = 200
MAX_DETAIL = 1000
# nginx's code for a client that closed the connection before it was answered: nobody
# receives it, but /metrics counts it apart from the server's own errors.
CLIENT_CLOSED = 499
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def document(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    """The problem's JSON document; a ``detail`` past ``MAX_DETAIL`` characters is cut."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + kind if kind else "about:blank",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = _cut(detail, MAX_DETAIL)
    body.update(extensions)
    return body


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = document(status, title, detail, kind=kind, **extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


class Refusal(Exception):
    """A request refused before any route ran (raised by the guards, answered by them)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        kind: str,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind
        self.headers = dict(headers or {})
        self.extensions = extensions

    def response(self) -> JSONResponse:
        return problem(
            self.status,
            self.title,
            self.detail,
            kind=self.kind,
            headers=self.headers,
            **self.extensions,
        )


def listed_errors(errors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``errors`` extension: the first ``MAX_LISTED_ERRORS`` errors as location,
    message and type only (pydantic's ``input`` and ``ctx`` can echo the whole body), and
    how many there were when that is more."""
    listed = [
        {
            "loc": [_short(part) for part in e.get("loc", ())][:MAX_LOC_PARTS],
            "msg": _cut(str(e.get("msg", "")), MAX_TEXT),
            "type": _cut(str(e.get("type", "")), MAX_TEXT),
        }
        for e in errors[:MAX_LISTED_ERRORS]
    ]
    extension: dict[str, Any] = {"errors": listed}
    if len(errors) > MAX_LISTED_ERRORS:
        extension |= {"errors_truncated": True, "error_count": len(errors)}
    return extension


def _short(part: object) -> object:
    return _cut(part, MAX_LOC_TEXT) if isinstance(part, str) else part


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem(
            400,
            "Malformed JSON",
            "The request body is not valid JSON.",
            kind="malformed-json",
            **listed_errors(errors),
        )
    return problem(
        422,
        "Invalid request",
        "The request did not pass validation.",
        kind="invalid-request",
        **listed_errors(errors),
    )


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem(exc.status_code, _reason(exc.status_code), detail, headers=headers or None)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (the router's own ``Allow`` names only
    the methods of the first route whose path matched)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def _client_closed(request: Request, exc: Exception) -> JSONResponse:
    """The client hung up before it was answered: not a server error, nothing to log."""
    return problem(CLIENT_CLOSED, "Client closed request", kind="client-closed")


def _turn_not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem(404, "Turn not found", str(exc) or None, kind="turn-not-found")


def _session_not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem(404, "Session not found", str(exc) or None, kind="session-not-found")


def _too_many_waiters(request: Request, exc: Exception) -> JSONResponse:
    return problem(
        503,
        "Too many waiting clients",
        "This server already holds as many waiting clients as it is allowed; retry, or "
        "poll without wait.",
        kind="too-many-waiters",
        headers={"Retry-After": "1"},
    )


def _conflict(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotencyConflict)
    return problem(
        422,
        "Idempotency-Key reused",
        "This Idempotency-Key was already used with a different request body.",
        kind="idempotency-key-reused",
        turn_id=exc.turn_id,
    )


def _full(request: Request, exc: Exception) -> JSONResponse:
    return problem(
        429, "Too many pending turns", str(exc), kind="mailbox-full", headers={"Retry-After": "1"}
    )


def _session_active(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SessionActive)
    return problem(
        409,
        "Session busy",
        "The message's strategy is reject and the session has a queued or running turn "
        "(turn_id); send it again once that turn has finished.",
        kind="session-active",
        headers={"Retry-After": "1"},
        turn_id=exc.turn_id,
    )


def _not_authenticated(request: Request, exc: Exception) -> JSONResponse:
    return problem(
        401,
        "Not authenticated",
        str(exc),
        kind="not-authenticated",
        headers={"WWW-Authenticate": 'Bearer realm="chatlane"'},
    )


def _rate_limited(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimited)
    return problem(
        429,
        "Rate limit exceeded",
        f"This tenant's {exc}; retry after {exc.retry_after_s} s.",
        kind="rate-limited",
        headers={"Retry-After": str(exc.retry_after_s)},
    )


def _history_full(request: Request, exc: Exception) -> JSONResponse:
    return problem(409, "Session history full", str(exc), kind="history-full")


def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("backing store unavailable: %s", exc)
    return problem(
        503,
        "Service unavailable",
        "The session store is unreachable; retry.",
        kind="store-unavailable",
        headers={"Retry-After": "1"},
    )


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Given explicitly: a plain function handler runs in a thread that has no exception.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "Internal error", "The request failed unexpectedly.", kind="internal")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _client_closed)
    app.add_exception_handler(TurnNotFound, _turn_not_found)
    app.add_exception_handler(SessionNotFound, _session_not_found)
    app.add_exception_handler(TooManyWaiters, _too_many_waiters)
    app.add_exception_handler(IdempotencyConflict, _conflict)
    app.add_exception_handler(MailboxFull, _full)
    app.add_exception_handler(HistoryFull, _history_full)
    app.add_exception_handler(SessionActive, _session_active)
    app.add_exception_handler(NotAuthenticated, _not_authenticated)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.add_exception_handler(redis.exceptions.ConnectionError, _unavailable)
    app.add_exception_handler(redis.exceptions.TimeoutError, _unavailable)
    app.add_exception_handler(redis.exceptions.ReadOnlyError, _unavailable)  # mid-failover
    app.add_exception_handler(redis.exceptions.BusyLoadingError, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
