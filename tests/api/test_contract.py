"""The OpenAPI document is a contract: the server answers every request as it says.

Schemathesis sends each operation of the document valid and invalid requests, with an
API key, to the real app (real Redis, real lifespan, API keys required); every answer
must match the document's statuses, content types, schemas and headers, invalid
requests must be refused, valid ones accepted, and the same request without the key (or
with a wrong one) must be a 401. No worker runs, so turns stay queued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi
from starlette.types import ASGIApp, Receive, Scope, Send

from api.main import create_app
from api.problems import PROBLEM_JSON
from shared.settings import Settings
from tests.api.conftest import LOCAL, finish_next_turn, make_key

# Small enough that a long poll on a turn no worker runs costs little; the document
# carries it as the maximum of `wait`, and a larger one is a 422.
MAX_WAIT_S = 0.05
TENANT = "acme"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    ignored_auth,
]

# A valid request may still be refused for what a schema cannot say: a message over the
# deployment's length limit, an Idempotency-Key used before with another body, a webhook
# URL that is not a public http(s) address, a webhook secret that is not a `whsec_` one
# (422). A session, turn or endpoint that does not exist is a 404. A message with strategy
# `reject` while a turn is pending, and a cancel of a finished turn, are a 409: what the
# session holds decides. Everything else that is valid must be accepted.
ACCEPTED = ["2xx", "404"]
SEMANTICS = [*ACCEPTED, "422"]
IN_STATE = [*SEMANTICS, "409"]
# An endpoint's body admits (and ignores) members it does not name, yet every number and
# string in a body is held to the limits of `api.strict_json` (a 400): a schema cannot
# say that of members it does not name.
SEMANTICS_AND_EXTRAS = [*SEMANTICS, "400"]
# A messaging platform's webhook is judged by the platform's signature, which no schema
# can describe: without it, 401 (or 403, 405 for a handshake), or 400 for a signed body
# that is not the platform's.
PLATFORM = [*ACCEPTED, "400", "401", "403", "405"]


def _accepting(operation: str, statuses: list[str]) -> dict[str, Any]:
    return {
        "include-name": operation,
        "checks": {"positive_data_acceptance": {"expected-statuses": statuses}},
    }


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240601,
        "generation": {
            "mode": "all",
            "deterministic": True,
            "max-examples": 20,
            # The key is sent by the test (below); a generated one beside it would be a
            # second key, which is refused.
            "with-security-parameters": False,
            # Text is UTF-8 without NUL (`api.strict_json`; a 400 as the document says):
            # a valid request is one a client could mean.
            "allow-x00": False,
            "codec": "utf-8",
        },
        # Stable in CI: cases come from the seed and the document alone, never from the
        # modules imported so far or from answers that hold fresh ids and timestamps.
        "analysis": {"constants": {"enabled": False}},
        "phases": {
            "examples": {"extra-data-sources": {"responses": False}},
            "coverage": {"extra-data-sources": {"responses": False}},
            "fuzzing": {
                "extra-data-sources": {"responses": False},
                "error-feedback": {"enabled": False},
            },
            "stateful": {"enabled": False},
        },
        "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
        "operations": [
            _accepting("POST /v1/sessions/{session_id}/turns", IN_STATE),
            _accepting("POST /v1/sessions/{session_id}/turns/{turn_id}/cancel", IN_STATE),
            _accepting("POST /v1/webhooks/endpoints", SEMANTICS_AND_EXTRAS),
            _accepting("POST /v1/channels", SEMANTICS),
            _accepting("PATCH /v1/channels/{endpoint_id}", SEMANTICS),
            _accepting("POST /v1/channels/{channel}/{endpoint_id}/webhook", PLATFORM),
            _accepting("GET /v1/channels/{channel}/{endpoint_id}/webhook", PLATFORM),
        ],
    }
)


@dataclass(frozen=True, slots=True)
class Served:
    app: FastAPI
    settings: Settings
    headers: dict[str, str]


class Current:
    """The app of the running test, as an ASGI app the schema is bound to when it is
    loaded (schemathesis sends every request of a case, its probes included, there)."""

    app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "no app is served"
        await self.app(scope, receive, send)


CURRENT = Current()


@pytest.fixture
def serve(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Served]]:
    """Serve the real app with API keys required (and one made), plus overrides."""

    def start(**overrides: Any) -> Served:
        settings = make_settings(auth="keys", max_wait_s=MAX_WAIT_S, **overrides)
        key = make_key(settings, TENANT)
        CURRENT.app = app = create_app(settings)
        return Served(app, settings, {"Authorization": f"Bearer {key}"})

    yield start
    asgi.shutdown_lifespans()  # schemathesis ran the app's lifespan on a loop of its own
    CURRENT.app = None


@pytest.fixture
def served(serve: Callable[..., Served]) -> Served:
    return serve()


# The document as any app with these settings serves it (building an app does no I/O);
# each test checks that the app it runs serves this very document.
DOCUMENT = create_app(Settings(max_wait_s=MAX_WAIT_S)).openapi()
loaded = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
loaded.app = CURRENT
# An event stream lasts as long as the client listens, so these are left out of the run;
# `test_event_streams_answer_with_the_documented_content_type` covers their answers.
schema = loaded.exclude(path_regex=r"/events$")


@schema.parametrize()
@settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_its_document_says(
    case: schemathesis.Case, served: Served
) -> None:
    assert served.app.openapi() == DOCUMENT
    case.call_and_validate(headers=served.headers, checks=CHECKS)


# For cases written by hand: what an answer must match (the data checks judge generated
# data only).
AS_DOCUMENTED = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
TURNS = "/v1/sessions/{session_id}/turns"


def _post_turn(
    served: Served, session: str, content: str, key: str | None = None, wait: float = 0
) -> schemathesis.Response:
    case = loaded[TURNS]["POST"].Case(
        path_parameters={"session_id": session},
        headers={"Idempotency-Key": key} if key else {},
        query={"wait": wait},
        body={"content": content},
        media_type="application/json",
    )
    response: schemathesis.Response = case.call_and_validate(
        headers=served.headers, checks=AS_DOCUMENTED
    )
    return response


def test_answers_a_fuzzer_seldom_reaches_are_as_documented(serve: Callable[..., Served]) -> None:
    served = serve(max_history_messages=2, max_pending_turns=1)
    made = _post_turn(served, "s1", "hi", key="k1", wait=MAX_WAIT_S)
    assert made.status_code == 202
    finish_next_turn(served.settings, "s1", tenant=TENANT)

    replayed = _post_turn(served, "s1", "hi", key="k1", wait=MAX_WAIT_S)
    assert replayed.status_code == 200
    assert replayed.headers["idempotent-replayed"] == ["true"]
    assert replayed.headers["location"] == made.headers["location"]

    reused = _post_turn(served, "s1", "another", key="k1")
    assert (reused.status_code, reused.json()["turn_id"]) == (422, made.json()["id"])
    assert _post_turn(served, "s1", "more").json()["type"].endswith(":history-full")

    assert _post_turn(served, "s2", "hi").status_code == 202
    full = _post_turn(served, "s2", "again")
    assert full.status_code == 429
    assert full.json()["type"].endswith(":mailbox-full")


def test_refusals_around_every_route_are_as_documented(serve: Callable[..., Served]) -> None:
    served = serve(rate_requests_per_minute=1)
    session = loaded["/v1/sessions/{session_id}"]["GET"].Case(path_parameters={"session_id": "s1"})

    anonymous = session.call_and_validate(checks=AS_DOCUMENTED)
    assert anonymous.status_code == 401
    assert (
        session.call_and_validate(headers=served.headers, checks=AS_DOCUMENTED).status_code == 404
    )
    limited = session.call_and_validate(headers=served.headers, checks=AS_DOCUMENTED)
    assert limited.status_code == 429
    assert limited.json()["type"].endswith(":rate-limited")

    # A method the path does not serve: no operation to hold it, so the document keeps it
    # among its components.
    not_allowed = DOCUMENT["components"]["responses"]["MethodNotAllowed"]
    with TestClient(served.app, raise_server_exceptions=False, client=LOCAL) as api:
        refused = api.post("/v1/sessions/s1", headers=served.headers)
    assert refused.status_code == 405
    assert refused.headers["content-type"] in not_allowed["content"]
    assert set(refused.headers["allow"].split(", ")) == {"GET", "DELETE"}


def _document(api: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = api.get("/openapi.json").json()
    return document


def test_event_streams_answer_with_the_documented_content_type(served: Served) -> None:
    turn_events = "/v1/sessions/{session_id}/turns/{turn_id}/events"
    documented = DOCUMENT["paths"][turn_events]["get"]["responses"]
    with TestClient(served.app, raise_server_exceptions=False, client=LOCAL) as api:
        made = api.post("/v1/sessions/s1/turns", json={"content": "hi"}, headers=served.headers)
        assert made.status_code == 202, made.text
        finish_next_turn(served.settings, "s1", tenant=TENANT)

        # A finished turn's stream ends with its final event.
        streamed = api.get(made.headers["location"] + "/events", headers=served.headers)
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].split(";")[0] in documented["200"]["content"]
        assert "event: completed" in streamed.text

        unknown = api.get(
            "/v1/sessions/s1/turns/turn_000000000000000000000000/events", headers=served.headers
        )
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] in documented["404"]["content"]

        for path in (turn_events, "/v1/sessions/{session_id}/events"):
            refused = api.get(path.format(session_id="s1", turn_id=made.json()["id"]))
            assert refused.status_code == 401
            assert (
                refused.headers["content-type"]
                in (DOCUMENT["paths"][path]["get"]["responses"]["401"]["content"])
            )


def test_creating_a_turn_is_documented_with_its_answers_headers_and_keys(served: Served) -> None:
    with TestClient(served.app, client=LOCAL) as api:
        document = _document(api)
    operation = document["paths"][TURNS]["post"]
    responses = operation["responses"]
    turn = {"$ref": "#/components/schemas/Turn"}
    problem = {"$ref": "#/components/schemas/Problem"}

    for status in ("200", "202"):
        assert responses[status]["content"] == {"application/json": {"schema": turn}}
        assert responses[status]["headers"]["Location"]["required"] is True
        assert "Idempotent-Replayed" in responses[status]["headers"]
    errors = {"400", "401", "408", "409", "413", "415", "422", "429", "503"}
    assert set(responses) == {"200", "202", *errors}
    for status in errors:
        assert responses[status]["content"] == {PROBLEM_JSON: {"schema": problem}}
    assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
    for status in ("429", "503"):
        assert responses[status]["headers"]["Retry-After"]["required"] is True
    assert "idempotency-key-reused" in responses["422"]["description"]
    assert "history-full" in responses["409"]["description"]

    schemes = document["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["bearer"].items()
    api_key = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert api_key.items() <= schemes["api-key"].items()
    assert operation["security"] == [{"bearer": []}, {"api-key": []}]


def test_every_error_is_a_problem_and_only_the_api_needs_a_key(served: Served) -> None:
    with TestClient(served.app, client=LOCAL) as api:
        document = _document(api)
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status"} <= set(problem["required"])
    assert problem["additionalProperties"] is True
    assert problem["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/FieldError"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert set(response["content"]) == {PROBLEM_JSON}, (method, path, status)
            keyed = path.startswith("/v1/") and not path.endswith("/webhook")  # platforms sign
            assert ("security" in operation) == keyed, (method, path)


def test_every_reference_in_the_document_resolves() -> None:
    found: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            found.extend(v for k, v in node.items() if k == "$ref" and isinstance(v, str))
            for child in node.values():
                collect(child)
        elif isinstance(node, list):
            for child in node:
                collect(child)

    collect(DOCUMENT)
    assert found
    for ref in found:
        target: Any = DOCUMENT
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict), ref
