"""RFC 9457 problem details: every error the API returns goes through here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import (
    IdempotencyConflict,
    MailboxFull,
    SessionNotFound,
    TooManyWaiters,
    TurnNotFound,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# Problem types are identifiers (RFC 9457 §3.1.1), not pages: a URN says so.
PROBLEM_TYPE_BASE = "urn:chatlane:problem:"


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + kind if kind else "about:blank",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem(
            400,
            "Malformed JSON",
            "The request body is not valid JSON.",
            kind="malformed-json",
            errors=errors,
        )
    return problem(
        422,
        "Invalid request",
        "The request did not pass validation.",
        kind="invalid-request",
        errors=errors,
    )


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem(exc.status_code, _reason(exc.status_code), detail, headers=exc.headers)


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
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", "The request failed unexpectedly.", kind="internal")


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(TurnNotFound, _turn_not_found)
    app.add_exception_handler(SessionNotFound, _session_not_found)
    app.add_exception_handler(TooManyWaiters, _too_many_waiters)
    app.add_exception_handler(IdempotencyConflict, _conflict)
    app.add_exception_handler(MailboxFull, _full)
    app.add_exception_handler(redis.exceptions.ConnectionError, _unavailable)
    app.add_exception_handler(redis.exceptions.TimeoutError, _unavailable)
    app.add_exception_handler(redis.exceptions.ReadOnlyError, _unavailable)  # mid-failover
    app.add_exception_handler(redis.exceptions.BusyLoadingError, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
