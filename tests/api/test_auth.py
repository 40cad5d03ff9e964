"""API keys: who may call, as which tenant, and what happens without a valid key."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from shared.settings import Settings
from tests.api.conftest import LOCAL, make_key, revoke_key

REMOTE = ("203.0.113.7", 40000)


def _app(settings: Settings, peer: tuple[str, int] = LOCAL) -> TestClient:
    return TestClient(create_app(settings), raise_server_exceptions=False, client=peer)


def _refused(response: object) -> dict[str, object]:
    assert response.status_code == 401, response.text  # type: ignore[attr-defined]
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["content-type"] == "application/problem+json"
    assert headers["www-authenticate"].startswith("Bearer")
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert body["type"] == "urn:chatlane:problem:not-authenticated"
    return body


@pytest.fixture
def keyed(settings: Settings) -> Iterator[tuple[TestClient, str]]:
    key = make_key(settings, "acme")
    with _app(settings) as api:
        yield api, key


def test_a_key_in_either_header_acts_for_its_tenant(
    keyed: tuple[TestClient, str], settings: Settings, client: redis.Redis
) -> None:
    api, key = keyed
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        made = api.post("/v1/sessions/s1/turns", json={"content": "hi"}, headers=headers)
        assert made.status_code == 202, made.text
    assert client.exists(f"{settings.key_prefix}:{{acme:s1}}:meta")
    assert not client.exists(f"{settings.key_prefix}:{{{settings.default_tenant}:s1}}:meta")
    assert client.llen(f"{settings.key_prefix}:{{acme:s1}}:mailbox") == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer clk_000000000000_" + "A" * 43},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
        {"X-API-Key": ""},
    ],
    ids=["missing", "unknown", "malformed", "basic", "empty-bearer", "empty-header"],
)
def test_a_missing_or_wrong_key_is_a_401_problem_and_writes_nothing(
    keyed: tuple[TestClient, str], headers: dict[str, str], client: redis.Redis, settings: Settings
) -> None:
    api, _ = keyed
    _refused(api.post("/v1/sessions/s1/turns", json={"content": "hi"}, headers=headers))
    _refused(api.get("/v1/sessions/s1/messages", headers=headers))
    assert not list(client.scan_iter(match=f"{settings.key_prefix}:{{*"))


def test_a_known_key_id_with_a_wrong_secret_is_refused(keyed: tuple[TestClient, str]) -> None:
    api, key = keyed
    forged = key[:17] + ("B" if key[17] != "B" else "C") + key[18:]
    _refused(api.get("/v1/sessions/s1", headers={"Authorization": f"Bearer {forged}"}))
    assert api.get("/v1/sessions/s1", headers={"Authorization": f"Bearer {key}"}).status_code == 404


def test_a_key_in_the_query_string_is_refused_even_beside_a_valid_header(
    keyed: tuple[TestClient, str],
) -> None:
    api, key = keyed
    for name in ("api_key", "key", "access_token"):
        body = _refused(
            api.get(f"/v1/sessions/s1?{name}={key}", headers={"Authorization": f"Bearer {key}"})
        )
        assert "header" in str(body["detail"])
    assert api.get("/v1/sessions/s1", headers={"Authorization": f"Bearer {key}"}).status_code == 404


def test_two_keys_in_one_request_are_refused(keyed: tuple[TestClient, str]) -> None:
    api, key = keyed
    _refused(
        api.get("/v1/sessions/s1", headers={"Authorization": f"Bearer {key}", "X-API-Key": key})
    )


def test_a_revoked_key_stops_working_on_every_replica_at_once(
    settings: Settings, client: redis.Redis
) -> None:
    key = make_key(settings, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    with _app(settings) as one, _app(settings) as two:
        assert one.get("/v1/sessions/s1", headers=auth).status_code == 404  # known key, no session
        assert two.get("/v1/sessions/s1", headers=auth).status_code == 404
        revoke_key(settings, key)
        _refused(one.get("/v1/sessions/s1", headers=auth))
        _refused(two.get("/v1/sessions/s1", headers=auth))
        # A deployment that had keys never falls back to anonymous access.
        _refused(one.get("/v1/sessions/s1"))
    stored = client.hgetall(f"{settings.key_prefix}:apikeys")
    assert key not in "".join(stored.values())  # only a digest is kept


def test_without_keys_loopback_clients_are_the_anonymous_tenant_and_others_are_refused(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    with _app(settings, LOCAL) as local, _app(settings, REMOTE) as remote:
        assert local.post("/v1/sessions/s1/turns", json={"content": "hi"}).status_code == 202
        body = _refused(remote.get("/v1/sessions/s1"))
        assert "loopback" in str(body["detail"])
    for peer in (LOCAL, REMOTE):
        with _app(make_settings(auth="keys"), peer) as strict:
            _refused(strict.get("/v1/sessions/s1"))
        with _app(make_settings(auth="open"), peer) as open_:
            assert open_.get("/v1/sessions/nobody").status_code == 404


def test_health_and_the_chat_page_need_no_key(keyed: tuple[TestClient, str]) -> None:
    api, _ = keyed
    assert api.get("/healthz").status_code == 200
    assert api.get("/").status_code == 200
