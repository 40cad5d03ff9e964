"""Model failures through the real ``ChatOpenAI`` client against a loopback server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from shared import mailbox
from shared.keys import SessionKeys
from shared.schemas import Turn
from shared.scripts import Scripts
from shared.settings import Settings
from tests.support.openai_server import ModelServer
from tests.worker.conftest import DepsFactory
from worker.turn import drain_session


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture
def openai_settings(make_settings: Callable[..., Settings], model_server: ModelServer) -> Settings:
    return make_settings(
        model="openai:loopback",
        openai_base_url=model_server.base_url,
        openai_api_key="test-key",
        model_max_retries=2,
        retry_backoff_s=0.01,
    )


def _turn(client: redis.Redis, keys: SessionKeys, turn_id: str) -> Turn:
    return Turn.from_record(client.hgetall(keys.turn(turn_id)))


def _queue(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys, *texts: str
) -> list[str]:
    return [
        mailbox.accept(client, scripts, settings, keys, input_doc={"content": t}).turn_id
        for t in texts
    ]


def test_a_429_with_retry_after_is_retried_after_the_pause_then_succeeds(
    client: redis.Redis,
    scripts: Scripts,
    make_deps: DepsFactory,
    openai_settings: Settings,
    model_server: ModelServer,
) -> None:
    keys = SessionKeys(openai_settings.key_prefix, "default", "rate-limited")
    [turn_id] = _queue(client, scripts, openai_settings, keys, "hello")
    model_server.state.script = [("status", "429", "1")]

    started = time.monotonic()
    drain_session(make_deps(openai_settings), "default", "rate-limited")

    turn = _turn(client, keys, turn_id)
    assert turn.status == "completed"
    assert turn.output is not None and turn.output.content == "ack hello"
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    assert len(model_server.state.prompts) == 1  # the 429 never reached the recorder


def test_a_dropped_connection_is_retried(
    client: redis.Redis,
    scripts: Scripts,
    make_deps: DepsFactory,
    openai_settings: Settings,
    model_server: ModelServer,
) -> None:
    keys = SessionKeys(openai_settings.key_prefix, "default", "dropped")
    [turn_id] = _queue(client, scripts, openai_settings, keys, "still there?")
    model_server.state.script = [("drop",), ("status", "503")]

    drain_session(make_deps(openai_settings), "default", "dropped")

    turn = _turn(client, keys, turn_id)
    assert turn.status == "completed"
    assert turn.output is not None
    assert turn.output.content == "ack still there?"
    assert model_server.state.script == []  # both failures were consumed, then it succeeded


def test_a_persistently_failing_model_fails_the_turn_and_the_next_turn_proceeds(
    client: redis.Redis,
    scripts: Scripts,
    make_deps: DepsFactory,
    openai_settings: Settings,
    model_server: ModelServer,
) -> None:
    keys = SessionKeys(openai_settings.key_prefix, "default", "flaky")
    first, second = _queue(client, scripts, openai_settings, keys, "one", "two")
    model_server.state.script = [("status", "500")] * 3  # first try + 2 retries

    report = drain_session(make_deps(openai_settings), "default", "flaky")

    assert report.committed == 2
    failed = _turn(client, keys, first)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "retries_exhausted"
    assert "500" in failed.error.message
    ok = _turn(client, keys, second)
    assert ok.status == "completed"
    # The failed turn wrote nothing to history; the next one saw an empty context.
    assert client.llen(keys.history) == 2
    assert [m["role"] for m in model_server.state.prompts[-1].messages] == ["user"]


def test_a_hanging_model_is_cut_off_by_the_request_timeout(
    client: redis.Redis,
    scripts: Scripts,
    make_deps: DepsFactory,
    make_settings: Callable[..., Settings],
    model_server: ModelServer,
) -> None:
    settings = make_settings(
        model="openai:loopback",
        openai_base_url=model_server.base_url,
        openai_api_key="test-key",
        model_timeout_s=0.5,
        model_max_retries=1,
    )
    keys = SessionKeys(settings.key_prefix, "default", "hung")
    [turn_id] = _queue(client, scripts, settings, keys, "anyone there?")
    model_server.state.script = [("hang",), ("hang",)]

    started = time.monotonic()
    drain_session(make_deps(settings), "default", "hung")
    elapsed = time.monotonic() - started

    turn = _turn(client, keys, turn_id)
    assert turn.status == "failed"
    assert turn.error is not None and "Timeout" in turn.error.message
    assert elapsed < 5


def test_a_request_the_model_refuses_fails_at_once_without_retries(
    client: redis.Redis,
    scripts: Scripts,
    make_deps: DepsFactory,
    openai_settings: Settings,
    model_server: ModelServer,
) -> None:
    keys = SessionKeys(openai_settings.key_prefix, "default", "refused")
    [turn_id] = _queue(client, scripts, openai_settings, keys, "bad")
    model_server.state.script = [("status", "400"), ("status", "400")]

    drain_session(make_deps(openai_settings), "default", "refused")

    turn = _turn(client, keys, turn_id)
    assert turn.status == "failed"
    assert turn.error is not None and turn.error.code == "model_error"
    assert model_server.state.script == [("status", "400")]  # exactly one request was made


def test_the_turn_deadline_fails_a_turn_whose_retries_would_overrun_it(
    client: redis.Redis,
    scripts: Scripts,
    make_deps: DepsFactory,
    make_settings: Callable[..., Settings],
    model_server: ModelServer,
) -> None:
    settings = make_settings(
        model="openai:loopback",
        openai_base_url=model_server.base_url,
        openai_api_key="test-key",
        model_timeout_s=1,
        turn_deadline_s=1,
        model_max_retries=5,
    )
    keys = SessionKeys(settings.key_prefix, "default", "late")
    [turn_id] = _queue(client, scripts, settings, keys, "hi")
    model_server.state.script = [("status", "429", "30")]

    started = time.monotonic()
    drain_session(make_deps(settings), "default", "late")

    turn = _turn(client, keys, turn_id)
    assert turn.status == "failed"
    assert turn.error is not None and turn.error.code == "deadline_exceeded"
    assert time.monotonic() - started < 5
