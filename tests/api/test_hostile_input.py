"""Hostile input, one class at a time, against the app's own guards (no server): each is
refused with a small RFC 9457 problem, never a 500, and a refused request writes nothing.

The protocol-level classes (heads, framing, timeouts, connections) need a real server:
``tests/api/test_http_server.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from shared.keys import is_valid_session_id
from shared.settings import Settings

LOOPBACK = ("127.0.0.1", 50000)
TURN_ID = "turn_" + "0" * 24
ENDPOINT_ID = "ep_" + "0" * 16


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOOPBACK) as client:
        yield client


def untouched(client: redis.Redis, settings: Settings) -> bool:
    """Not one key under the test's prefix, nothing on its queue."""
    written = list(client.scan_iter(match=f"{settings.key_prefix}:*"))
    return written == [] and client.llen(settings.queue) == 0


def assert_problem(response: httpx.Response, status: int, kind: str | None = None) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert len(response.content) < 4096, len(response.content)
    body = response.json()
    assert body["status"] == status and body["title"]
    if kind is not None:
        assert body["type"] == f"urn:chatlane:problem:{kind}"
    return body


def post_json(api: TestClient, path: str, raw: bytes, **headers: str) -> httpx.Response:
    return api.post(path, content=raw, headers={"content-type": "application/json", **headers})


# 1. Integers from the client never reach Redis out of its range.

HUGE = ["9223372036854775807", "18446744073709551616", "-9223372036854775809", "1" + "0" * 40]


def _path_value(name: str) -> str:
    return {"turn_id": TURN_ID, "endpoint_id": ENDPOINT_ID}.get(name, "s1")


def test_every_integer_query_parameter_is_bounded_so_no_value_overflows(api: TestClient) -> None:
    assert api.post("/v1/sessions/s1/turns", json={"content": "hi"}).status_code == 202
    tried = 0
    for path, operations in api.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        for method, operation in operations.items():
            url = re.sub(r"\{(\w+)\}", lambda m: _path_value(m[1]), path)
            for param in operation.get("parameters", []):
                schema = param.get("schema", {})
                types = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
                if param["in"] != "query" or "integer" not in types:
                    continue
                for value in HUGE:
                    answer = api.request(method.upper(), url, params={param["name"]: value})
                    tried += 1
                    assert answer.status_code < 500, (method, url, param["name"], value)
                    if answer.status_code >= 400:
                        assert_problem(answer, answer.status_code)
    assert tried >= 4 * len(HUGE)


@pytest.mark.parametrize(
    "event_id", ["99999999999999999999-0", "18446744073709551615-18446744073709551615"]
)
def test_an_event_id_past_the_largest_redis_stream_id_is_a_422(
    api: TestClient, event_id: str
) -> None:
    assert api.post("/v1/sessions/s1/turns", json={"content": "hi"}).status_code == 202
    with api.stream("GET", "/v1/sessions/s1/events", headers={"last-event-id": event_id}) as answer:
        assert answer.status_code == 422
        assert answer.headers["content-type"] == "application/problem+json"


# 2. A client that hangs up mid-body is neither an error nor a 5xx.


def test_a_client_that_hangs_up_mid_body_is_counted_as_499_and_not_logged(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[dict[str, Any]] = []
    incoming = iter(
        [
            {"type": "http.request", "body": b'{"content": "hel', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/sessions/s1/turns",
        "raw_path": b"/v1/sessions/s1/turns",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"40")],
        "client": LOOPBACK,
        "server": ("testserver", 80),
        "state": {},
    }
    with caplog.at_level(logging.INFO):
        asyncio.run(api.app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    metrics = api.get("/metrics").text
    assert 'route="unmatched",status="499"' in metrics
    assert 'status="500"' not in metrics


# 3. Ids made only of dots (clients remove such segments) are refused everywhere.


@pytest.mark.parametrize("dots", ["%2e", "%2e%2e", "%2E%2E%2e", ".%2e"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/sessions/{}/turns"),
        ("GET", "/v1/sessions/{}/messages"),
        ("GET", "/v1/sessions/{}/events"),
        ("POST", "/v1/webhooks/dead-letters/{}/replay"),
    ],
)
def test_an_id_made_only_of_dots_is_a_422_and_writes_nothing(
    api: TestClient, client: redis.Redis, settings: Settings, dots: str, method: str, path: str
) -> None:
    answer = api.request(method, path.format(dots), json={"content": "hi"})
    assert_problem(answer, 422, "invalid-request")
    assert untouched(client, settings)


def test_the_session_id_pattern_itself_refuses_dots_only() -> None:
    assert not any(is_valid_session_id(s) for s in (".", "..", "...", "." * 128))
    assert all(is_valid_session_id(s) for s in ("a", ".a", "a.b", "a.", "..a..", "x" * 128))
    assert not is_valid_session_id("x" * 129)


# 4. One request, one reading: repeated keys, parameters and headers are refused.


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b'{"content": "a", "content": "b"}', "/v1/sessions/s1/turns"),
        (b'{"content": "a", "x": [{"k": 1, "k": 1}]}', "/v1/sessions/s1/turns"),
        (b'{"url": "http://a.example/", "url": "http://b.example/"}', "/v1/webhooks/endpoints"),
    ],
)
def test_a_json_body_that_repeats_a_key_at_any_depth_is_a_400(
    api: TestClient, client: redis.Redis, settings: Settings, raw: bytes, path: str
) -> None:
    assert_problem(post_json(api, path, raw), 400, "duplicate-json-key")
    assert untouched(client, settings)


@pytest.mark.parametrize("query", ["wait=1&wait=2", "wait=1&wai%74=1", "order=asc&order=desc"])
def test_a_repeated_query_parameter_is_a_400(
    api: TestClient, client: redis.Redis, settings: Settings, query: str
) -> None:
    assert_problem(
        api.post(f"/v1/sessions/s1/turns?{query}", json={"content": "a"}),
        400,
        "repeated-query-parameter",
    )
    assert untouched(client, settings)


@pytest.mark.parametrize(
    "headers",
    [
        [("idempotency-key", "a"), ("idempotency-key", "b")],
        [("content-type", "application/json"), ("content-type", "text/plain")],
        [("last-event-id", "1-0"), ("last-event-id", "2-0")],
        [("origin", "https://a.example"), ("origin", "https://b.example")],
        [("idempotency-key", "a"), ("idempotency_key", "b")],
    ],
)
def test_a_repeated_single_valued_header_is_a_400(
    api: TestClient, client: redis.Redis, settings: Settings, headers: list[tuple[str, str]]
) -> None:
    if not any(name == "content-type" for name, _ in headers):
        headers = [("content-type", "application/json"), *headers]
    answer = api.post("/v1/sessions/s1/turns", content=b'{"content": "a"}', headers=headers)
    assert_problem(answer, 400, "repeated-header")
    assert untouched(client, settings)


# 5. A body must say it is JSON: no form or text/plain "simple request" from a web page.


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "multipart/form-data; boundary=x"},
        {"content-type": "application/json; charset=latin-1"},
        {"content-type": "application/jsonx"},
        {},
    ],
)
def test_a_body_not_labelled_json_is_a_415(
    api: TestClient, client: redis.Redis, settings: Settings, headers: dict[str, str]
) -> None:
    answer = api.post("/v1/sessions/s1/turns", content=b'{"content": "a"}', headers=headers)
    assert_problem(answer, 415, "unsupported-media-type")
    assert untouched(client, settings)


def test_a_compressed_body_is_a_415(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    answer = post_json(api, "/v1/sessions/s1/turns", b'{"content": "a"}', **{
        "content-encoding": "gzip"
    })  # fmt: skip
    assert_problem(answer, 415, "unsupported-content-encoding")
    assert untouched(client, settings)


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON; charset=UTF-8", "application/x+json"]
)
def test_json_in_any_of_its_spellings_is_accepted(api: TestClient, content_type: str) -> None:
    answer = api.post(
        "/v1/sessions/s1/turns", content=b'{"content": "a"}', headers={"content-type": content_type}
    )
    assert answer.status_code == 202, answer.text


def test_no_cors_headers_unless_origins_are_configured(api: TestClient) -> None:
    evil = {"origin": "https://evil.example"}
    assert "access-control-allow-origin" not in api.get("/healthz", headers=evil).headers
    preflight = api.options(
        "/v1/sessions/s1/turns", headers={**evil, "access-control-request-method": "POST"}
    )
    assert_problem(preflight, 405)
    assert preflight.headers["allow"] == "GET, POST"
    assert "access-control-allow-origin" not in preflight.headers


def test_configured_origins_are_allowed_and_others_refused_as_problems(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(cors_origins="https://app.example, http://localhost:3000")
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOOPBACK) as api:
        asked = {"access-control-request-method": "POST"}
        allowed = api.options(
            "/v1/sessions/s1/turns", headers={"origin": "https://app.example", **asked}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        refused = api.options(
            "/v1/sessions/s1/turns", headers={"origin": "https://evil.example", **asked}
        )
        assert_problem(refused, 400, "cors-refused")
        assert "access-control-allow-origin" not in refused.headers
        form = api.post(
            "/v1/sessions/s1/turns",
            content=b"content=hi",
            headers={"origin": "https://app.example", "content-type": "text/plain"},
        )
        assert_problem(form, 415)  # readable by the page that sent it, and nothing written
        assert form.headers["access-control-allow-origin"] == "https://app.example"


# 7. An error never costs more than its request: capped lists, no echoed input.


def test_a_422_lists_at_most_20_errors_and_never_echoes_the_input(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    secret = "S3CRET-VALUE-" * 8
    fields = {f"unknown-{i}-{'k' * 100}": secret for i in range(1000)}
    raw = json.dumps({"content": "hi", **fields}).encode()
    answer = post_json(api, "/v1/sessions/s1/turns", raw)
    body = assert_problem(answer, 422, "invalid-request")
    assert len(body["errors"]) == 20
    assert body["errors_truncated"] is True and body["error_count"] == 1000
    assert "S3CRET" not in answer.text
    assert len(answer.content) * 50 < len(raw)
    long_value = api.get("/v1/sessions/s1/messages", params={"limit": "9" * 5000 + "x"})
    assert_problem(long_value, 422)
    assert "9" * 300 not in long_value.text
    assert list(client.scan_iter(match=f"{settings.key_prefix}:{{*")) == []


# 8. No trailing-slash redirect (it would be built from the client's Host header).


def test_a_trailing_slash_is_a_404_never_a_redirect_elsewhere(api: TestClient) -> None:
    answer = api.get(
        "/v1/sessions/s1/messages/", headers={"host": "evil.example"}, follow_redirects=False
    )
    assert_problem(answer, 404)
    assert "location" not in answer.headers


# 10. The rest of the same spirit.


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"content": "\xff\xfe"}', "malformed-json"),
        (b'\xef\xbb\xbf{"content": "bom"}', "malformed-json"),
        (b'{"content": "a\\u0000b"}', "invalid-json-text"),
        (b'{"content": "\\ud800"}', "invalid-json-text"),
        (b'{"content": "a", "\\udfff": 1}', "invalid-json-text"),
        (b'{"content": "a", "n": 1e999}', "json-number-out-of-range"),
        (b'{"content": "a", "n": -1e999}', "json-number-out-of-range"),
        (b'{"content": "a", "n": 99999999999999999999}', "json-number-out-of-range"),
        (b'{"content": "a", "n": ' + b"9" * 5000 + b"}", "json-number-out-of-range"),
        (b'{"content": "a", "n": NaN}', "malformed-json"),
        (b'{"content": "a", "n": Infinity}', "malformed-json"),
        (b"[" * 100_000 + b"]" * 100_000, "json-too-deep"),
        (b'{"content": "a", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "json-too-deep"),
        (b'{"content": "a"} {"content": "b"}', "malformed-json"),
    ],
)
def test_text_numbers_and_nesting_no_parser_agrees_on_are_a_400(
    api: TestClient, client: redis.Redis, settings: Settings, raw: bytes, kind: str
) -> None:
    assert_problem(post_json(api, "/v1/sessions/s1/turns", raw), 400, kind)
    assert untouched(client, settings)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "FOO", "TRACE"])
def test_an_unserved_method_is_a_405_problem_that_names_the_allowed_ones(
    api: TestClient, method: str
) -> None:
    answer = api.request(method, "/v1/sessions/s1/turns")
    assert_problem(answer, 405)
    assert answer.headers["allow"] == "GET, POST"


def test_an_accept_header_that_excludes_json_changes_nothing(api: TestClient) -> None:
    html = {"accept": "text/html"}
    assert api.get("/v1/sessions/nobody", headers=html).headers["content-type"] == (
        "application/problem+json"
    )
    answer = api.post("/v1/sessions/s1/turns", json={"content": "a"}, headers=html)
    assert answer.status_code == 202 and answer.headers["content-type"] == "application/json"


def test_an_expectation_other_than_100_continue_is_a_417(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    answer = post_json(api, "/v1/sessions/s1/turns", b'{"content": "a"}', expect="teapot")
    assert_problem(answer, 417, "expectation-failed")
    assert untouched(client, settings)
