"""The OpenAPI document, made to say what the server really answers.

FastAPI documents what a route returns. Everything else an operation can answer is
added here, so that a client (or a contract test) can rely on the document:

- every error is an RFC 9457 problem (``application/problem+json``, the ``Problem``
  schema), listed per status with the problem types (``urn:chatlane:problem:<kind>``)
  that status stands for; FastAPI's own ``application/json`` 422 is replaced;
- a route names the problems of its own in its decorator (``responses=problems(...)``);
  the problems any request can meet before or around a route are added to every
  operation they apply to (``implied``): the request guards (``api.guards``), request
  validation, API keys and tenant rate limits, and an unreachable store;
- ``/v1`` operations require an API key, as ``Authorization: Bearer <key>`` or
  ``X-API-Key``; health, metrics and the chat page require none;
- ``wait`` is documented with the deployment's own cap (``CHATLANE_MAX_WAIT_S``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.problems import PROBLEM_JSON, PROBLEM_TYPE_BASE
from api.schemas import Problem
from shared.settings import Settings
from shared.store import Turn

SCHEMAS = "#/components/schemas/"
LOCAL_DEFS = "#/$defs/"
API_PREFIX = "/v1/"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`chatlane keys create --tenant NAME`) as a bearer token.",
    },
    "api-key": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same API key, in a header of its own.",
    },
}
# Either scheme will do; a key in the URL is refused.
SECURITY: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]

HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "WWW-Authenticate": {
        "description": "How to authenticate: `Bearer`.",
        "schema": {"type": "string"},
    },
    "Allow": {
        "description": "The methods the path serves.",
        "schema": {"type": "string"},
    },
}


@dataclass(frozen=True, slots=True)
class Answer:
    """Problems of one status that one cause answers with, and the headers they carry."""

    status: int
    kinds: tuple[str, ...]
    text: str
    headers: tuple[str, ...] = ()

    def line(self) -> str:
        kinds = ", ".join(f"`{kind}`" for kind in self.kinds)
        return f"- {kinds}: {self.text}"


# -- every request (api.guards) ---------------------------------------------------------
MALFORMED_REQUEST = Answer(
    400,
    ("repeated-query-parameter", "repeated-header", "bad-framing", "unsupported-target"),
    "a query parameter or a single-valued header is repeated, or the framing or target "
    "is not one a single reading can be given.",
)
INVALID_REQUEST = Answer(
    422,
    ("invalid-request",),
    "a parameter or the body failed validation (the `errors` member says where), or a "
    "path segment is made only of dots.",
)
# -- a request body ---------------------------------------------------------------------
MALFORMED_BODY = Answer(
    400,
    (
        "malformed-json",
        "duplicate-json-key",
        "json-too-deep",
        "json-number-out-of-range",
        "invalid-json-text",
    ),
    "the body is not one strict UTF-8 JSON document (no repeated keys, bounded depth and "
    "numbers, no NUL or lone surrogates).",
)
BODY_TIMEOUT = Answer(408, ("body-timeout",), "the body did not arrive in time.")
BODY_TOO_LARGE = Answer(413, ("body-too-large",), "the body is larger than allowed.")
NOT_JSON = Answer(
    415,
    ("unsupported-media-type", "unsupported-content-encoding"),
    "the body is not labelled `application/json` (UTF-8), or has a `Content-Encoding`.",
)
# -- /v1 ----------------------------------------------------------------------------------
NOT_AUTHENTICATED = Answer(
    401,
    ("not-authenticated",),
    "no valid API key: missing, unknown, revoked, malformed, given twice, or in the URL.",
    ("WWW-Authenticate",),
)
RATE_LIMITED = Answer(
    429,
    ("rate-limited",),
    "the tenant's requests or tokens per minute are spent.",
    ("Retry-After",),
)
STORE_UNAVAILABLE = Answer(
    503, ("store-unavailable",), "the session store is unreachable.", ("Retry-After",)
)
# -- named by routes ----------------------------------------------------------------------
SESSION_NOT_FOUND = Answer(
    404, ("session-not-found",), "the session has no turns: never used, or expired."
)
TURN_NOT_FOUND = Answer(404, ("turn-not-found",), "no such turn in this session.")
NOT_FOUND = Answer(404, ("not-found",), "no such webhook endpoint or dead letter.")
NO_DEAD_TURN = Answer(404, ("not-found",), "no such dead turn.")
HISTORY_FULL = Answer(
    409,
    ("history-full",),
    "the session's history is at its size limit: clear it (`DELETE`) or use a new session.",
)
MESSAGE_TOO_LONG = Answer(
    422, ("message-too-long",), "`content` is longer than `CHATLANE_MAX_MESSAGE_CHARS`."
)
WEBHOOK_URL_REFUSED = Answer(
    422, ("webhook-url-refused",), "the webhook URL is not a public http(s) URL."
)
IDEMPOTENCY_KEY_REUSED = Answer(
    422,
    ("idempotency-key-reused",),
    "the `Idempotency-Key` was used before with a different body (`turn_id` names the "
    "turn it was used for).",
)
SESSION_ACTIVE = Answer(
    409,
    ("session-active",),
    "strategy `reject`, and the session has a queued or running turn (`turn_id`).",
    ("Retry-After",),
)
TURN_FINISHED = Answer(
    409,
    ("turn-finished",),
    "the turn had already finished (`turn_status`): it was left as it was.",
)
MAILBOX_FULL = Answer(
    429, ("mailbox-full",), "the session has too many pending turns.", ("Retry-After",)
)
TOO_MANY_WAITERS = Answer(
    503,
    ("too-many-waiters",),
    "this server holds as many waiting clients as it may: retry, or poll without `wait`.",
    ("Retry-After",),
)
CHANNEL_NOT_FOUND = Answer(
    404, ("not-found",), "no such channel endpoint (or not of this channel)."
)
CHANNEL_REFUSED = Answer(
    401,
    ("channel-request-refused",),
    "the platform's signature or secret is missing or wrong, or its timestamp is stale: "
    "nothing was written.",
)
CHANNEL_FORBIDDEN = Answer(
    403,
    ("channel-request-refused",),
    "a verification handshake with the wrong token, or a message for another account.",
)
CHANNEL_NO_HANDSHAKE = Answer(
    405, ("channel-request-refused",), "this platform's webhook has no verification handshake."
)
CHANNEL_PAYLOAD = Answer(
    400, ("malformed-payload",), "a verified request whose body is not the platform's."
)
CHANNEL_REFUSED_URL = Answer(
    422, ("channel-url-refused",), "`api_base` or `public_url` is not a usable http(s) URL."
)
NOT_READY = Answer(503, ("not-ready",), "a dependency is unreachable or unsafe (`checks`).")


OVERVIEW = (
    "Errors are RFC 9457 problems (`application/problem+json`); a problem's `type` is "
    f"`{PROBLEM_TYPE_BASE}<kind>`, and each operation lists the kinds it can answer "
    "with. Any request may also be refused before it is routed: a path that no "
    "operation serves is a `404`, a method the path does not serve a `405` with "
    "`Allow` (`#/components/responses/MethodNotAllowed`), an `Expect` other than "
    "`100-continue` a `417`; and a body, on any method, is held to the limits listed "
    "for bodies (`400`, `408`, `413`, `415`).\n\n"
    "`/v1` operations require an API key, as `Authorization: Bearer <key>` or "
    "`X-API-Key: <key>`, and spend the tenant's rate limit."
)


def problems(*answers: Answer) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route decorator: the problems the route itself answers with."""
    found: dict[int | str, dict[str, Any]] = {}
    for answer in answers:
        found[answer.status] = _add(found.get(answer.status), answer)
    return found


def turn_answer(description: str, *, replayable: bool) -> dict[str, Any]:
    """A response that is a turn, with the ``Location`` to poll it at (and, when the
    request could be a replay, ``Idempotent-Replayed``)."""
    headers: dict[str, Any] = {
        "Location": {
            "description": "Where the turn can be read: `/v1/sessions/{session_id}/turns/{id}`.",
            "required": True,
            "schema": {"type": "string"},
        }
    }
    if replayable:
        headers["Idempotent-Replayed"] = {
            "description": (
                "`true` when the request repeated an earlier one's `Idempotency-Key` and "
                "body: this is the turn that request made, and nothing new was queued."
            ),
            "schema": {"type": "string", "enum": ["true"]},
        }
    return {"description": description, "model": Turn, "headers": headers}


def implied(path: str, operation: Mapping[str, Any]) -> list[Answer]:
    """The problems an operation can answer with whatever its route does."""
    found = [MALFORMED_REQUEST]
    if "requestBody" in operation:
        found += [MALFORMED_BODY, BODY_TIMEOUT, BODY_TOO_LARGE, NOT_JSON]
    if operation.get("parameters") or "requestBody" in operation:
        found.append(INVALID_REQUEST)
    if is_platform_webhook(path):
        found.append(STORE_UNAVAILABLE)
    elif path.startswith(API_PREFIX):
        found += [NOT_AUTHENTICATED, RATE_LIMITED, STORE_UNAVAILABLE]
    return found


def is_platform_webhook(path: str) -> bool:
    """A messaging platform's webhook: authenticated by the platform's signature, not by
    an API key."""
    return path.startswith("/v1/channels/{channel}/") and path.endswith("/webhook")


def install(app: FastAPI, settings: Settings) -> None:
    """Serve ``document`` as the app's OpenAPI document (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            raw = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
            app.openapi_schema = document(raw, max_wait_s=settings.max_wait_s)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(raw: dict[str, Any], *, max_wait_s: float) -> dict[str, Any]:
    """``raw`` (FastAPI's document, changed in place) as the server answers it."""
    for path, operations in raw.get("paths", {}).items():
        for operation in operations.values():
            responses: dict[str, Any] = operation["responses"]
            default_422 = responses.get("422")
            if default_422 and PROBLEM_JSON not in default_422.get("content", {}):
                del responses["422"]  # FastAPI's HTTPValidationError: never sent
            for answer in implied(path, operation):
                key = str(answer.status)
                responses[key] = _add(responses.get(key), answer)
            operation["responses"] = dict(sorted(responses.items()))
            for parameter in operation.get("parameters", ()):
                if parameter["in"] == "query" and parameter["name"] == "wait":
                    parameter["schema"]["maximum"] = max_wait_s  # more is a 422
            if path.startswith(API_PREFIX) and not is_platform_webhook(path):
                operation["security"] = SECURITY
    components = raw.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Problem"] = Problem.model_json_schema(ref_template=SCHEMAS + "{model}")
    _hoist_definitions(raw, schemas)
    components["securitySchemes"] = SECURITY_SCHEMES
    components["responses"] = {"MethodNotAllowed": _method_not_allowed()}
    info = raw["info"]
    info["description"] = "\n\n".join(filter(None, [info.get("description"), OVERVIEW]))
    return raw


def _add(response: dict[str, Any] | None, answer: Answer) -> dict[str, Any]:
    """``response`` with ``answer`` listed in it: a header is required only when every
    problem of the status carries it."""
    if response is None:
        return {
            "description": answer.line(),
            "content": {PROBLEM_JSON: {"schema": {"$ref": SCHEMAS + "Problem"}}},
            **({"headers": _headers(answer.headers, required=True)} if answer.headers else {}),
        }
    lines = response["description"].splitlines()
    if answer.line() in lines:
        return response
    headers: dict[str, Any] = {
        name: {**header, "required": header["required"] and name in answer.headers}
        for name, header in response.get("headers", {}).items()
    }
    headers |= _headers((h for h in answer.headers if h not in headers), required=False)
    merged = {**response, "description": "\n".join([*lines, answer.line()])}
    if headers:
        merged["headers"] = headers
    return merged


def _hoist_definitions(node: Any, schemas: dict[str, Any]) -> None:
    """Move the ``$defs`` of schemas written inline (pydantic's, in ``responses=`` and
    ``openapi_extra=``) to the components, where their ``#/$defs/...`` references, read
    from the document's root, can find them."""
    if isinstance(node, dict):
        for name, schema in node.pop("$defs", {}).items():
            _hoist_definitions(schema, schemas)
            schemas.setdefault(name, schema)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(LOCAL_DEFS):
            node["$ref"] = SCHEMAS + ref.removeprefix(LOCAL_DEFS)
        for child in list(node.values()):
            _hoist_definitions(child, schemas)
    elif isinstance(node, list):
        for child in node:
            _hoist_definitions(child, schemas)


def _headers(names: Iterable[str], *, required: bool) -> dict[str, Any]:
    return {name: {**HEADERS[name], "required": required} for name in names}


def _method_not_allowed() -> dict[str, Any]:
    return {
        "description": "A method the path does not serve (about:blank).",
        "headers": _headers(["Allow"], required=True),
        "content": {PROBLEM_JSON: {"schema": {"$ref": SCHEMAS + "Problem"}}},
    }
