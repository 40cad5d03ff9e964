"""Double texting and cancellation over HTTP (no worker runs: turns stay queued unless a
test finishes them)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from shared.settings import Settings
from tests.api.conftest import finish_next_turn


def _post(api: TestClient, session: str, content: str, **extra: object) -> dict[str, object]:
    answer = api.post(f"/v1/sessions/{session}/turns", json={"content": content, **extra})
    assert answer.status_code == 202, answer.text
    body: dict[str, object] = answer.json()
    return body


def test_cancelling_a_queued_turn_answers_the_cancelled_turn_and_ends_its_stream(
    api: TestClient,
) -> None:
    turn = _post(api, "s", "hello")
    first = api.post(f"/v1/sessions/s/turns/{turn['id']}/cancel")
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "cancelled"
    assert first.json()["cancellation"] == {"reason": "requested", "by": None}
    again = api.post(f"/v1/sessions/s/turns/{turn['id']}/cancel")
    assert (again.status_code, again.json()) == (200, first.json())
    with api.stream("GET", f"/v1/sessions/s/turns/{turn['id']}/events") as stream:
        text = "".join(stream.iter_text())
    assert text.rstrip().split("\n\n")[-1].startswith("id: ")
    assert "event: cancelled" in text.rstrip().split("\n\n")[-1]
    session = api.get("/v1/sessions/s").json()
    assert (session["pending_turns"], session["finished_turns"]) == (0, 1)


def test_a_finished_turn_is_left_as_it_is_and_an_unknown_one_is_not_found(
    api: TestClient, settings: Settings
) -> None:
    turn = _post(api, "s", "hello")
    finish_next_turn(settings, "s")
    for _ in range(2):
        refused = api.post(f"/v1/sessions/s/turns/{turn['id']}/cancel")
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["type"] == "urn:chatlane:problem:turn-finished"
        assert (problem["turn_id"], problem["turn_status"]) == (turn["id"], "completed")
    missing = api.post("/v1/sessions/s/turns/turn_000000000000000000000000/cancel")
    assert missing.status_code == 404 and missing.json()["type"].endswith("turn-not-found")


def test_reject_is_a_409_naming_the_pending_turn_with_retry_after(api: TestClient) -> None:
    pending = _post(api, "s", "first")
    refused = api.post("/v1/sessions/s/turns", json={"content": "second", "strategy": "reject"})
    assert refused.status_code == 409
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["type"] == "urn:chatlane:problem:session-active"
    assert refused.json()["turn_id"] == pending["id"]
    assert api.get("/v1/sessions/s").json()["turn_count"] == 1  # nothing was queued


def test_bad_strategies_and_debounces_are_422_problems(api: TestClient) -> None:
    for body in (
        {"content": "x", "strategy": "shout"},
        {"content": "x", "strategy": None, "debounce_s": 61},
        {"content": "x", "debounce_s": -1},
        {"content": "x", "debounce_s": "1"},
    ):
        answer = api.post("/v1/sessions/s/turns", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    for body in ({"strategy": "later"}, {"debounce_s": 3600}, {"other": 1}):
        answer = api.put("/v1/sessions/s/defaults", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert api.put("/v1/defaults", json=body).status_code == 422
    assert api.get("/v1/sessions/s").status_code == 404  # nothing was created


def test_a_sessions_defaults_are_shown_applied_and_unset(api: TestClient) -> None:
    made = api.put("/v1/sessions/s/defaults", json={"strategy": "coalesce", "debounce_s": 1.5})
    assert made.status_code == 200
    assert (made.json()["strategy"], made.json()["debounce_s"], made.json()["turn_count"]) == (
        "coalesce",
        1.5,
        0,
    )
    assert _post(api, "s", "a")["strategy"] == "coalesce"
    assert _post(api, "s", "b", strategy="enqueue")["strategy"] == "enqueue"
    cleared = api.put("/v1/sessions/s/defaults", json={}).json()
    assert (cleared["strategy"], cleared["debounce_s"]) == (None, None)
    assert _post(api, "s", "c")["strategy"] == "enqueue"  # the deployment's


def test_metrics_count_cancels_by_reason_and_rejections(api: TestClient) -> None:
    _post(api, "m", "a")
    _post(api, "m", "b", strategy="interrupt")
    api.post("/v1/sessions/m/turns", json={"content": "c", "strategy": "reject"})
    later = _post(api, "n", "d")
    api.post(f"/v1/sessions/n/turns/{later['id']}/cancel")
    api.post(f"/v1/sessions/n/turns/{later['id']}/cancel")  # already cancelled: not again
    text = api.get("/metrics").text
    assert 'chatlane_turns_cancelled_total{reason="interrupted"} 1.0' in text
    assert 'chatlane_turns_cancelled_total{reason="requested"} 1.0' in text
    assert "chatlane_turns_rejected_total 1.0" in text
