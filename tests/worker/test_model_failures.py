"""Model failures through both OpenAI clients (chatlane's streaming client and
``langchain-openai``'s ``ChatOpenAI``) against a loopback server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from langchain_core.messages import HumanMessage
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.errors import LockLost, TurnStopped
from shared.settings import Settings
from shared.store import Turn
from tests.support.openai_server import Behaviour, ModelServer
from tests.worker.conftest import RuntimeFactory
from worker.echo import EchoChatModel
from worker.model import call_model
from worker.turn import DrainReport, drain_session


@dataclass
class Loopback:
    """Queues turns in one session, scripts the model server, drains, reads the turns."""

    client: redis.Redis
    make_settings: Callable[..., Settings]
    make_runtime: RuntimeFactory
    server: ModelServer
    kind: str
    report: DrainReport | None = None
    history_length: int = 0

    async def run(self, texts: list[str], script: list[Behaviour], **overrides: Any) -> list[Turn]:
        settings = self.make_settings(
            model=f"{self.kind}:loopback",
            openai_base_url=self.server.base_url,
            openai_api_key="test-key",
            **{"model_max_retries": 2, "retry_backoff_s": 0.01, **overrides},
        )
        rt = self.make_runtime(settings)
        keys = rt.store.keys("default", "s")
        ids = [(await rt.store.accept(keys, input_doc={"content": t})).turn_id for t in texts]
        self.server.state.script = list(script)
        self.report = await drain_session(rt, "default", "s")
        self.history_length = self.client.llen(keys.history)
        return [Turn.from_json(self.client.hget(keys.turns, i)) for i in ids]  # type: ignore[arg-type]


@pytest.fixture(params=["openai", "langchain-openai"])
def loopback(
    request: pytest.FixtureRequest,
    client: redis.Redis,
    make_settings: Callable[..., Settings],
    make_runtime: RuntimeFactory,
) -> Iterator[Loopback]:
    with ModelServer() as server:
        yield Loopback(client, make_settings, make_runtime, server, request.param)


async def test_a_429_with_retry_after_is_retried_after_the_pause_then_succeeds(
    loopback: Loopback,
) -> None:
    started = time.monotonic()
    [turn] = await loopback.run(["hello"], [("status", "429", "1")])

    assert turn.status == "completed"
    assert turn.output is not None
    assert turn.output.content == "ack hello"
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    assert len(loopback.server.state.prompts) == 1  # the 429 never reached the recorder


async def test_a_dropped_connection_is_retried(loopback: Loopback) -> None:
    [turn] = await loopback.run(["still there?"], [("drop",), ("status", "503")])

    assert turn.status == "completed"
    assert turn.output is not None
    assert turn.output.content == "ack still there?"
    assert loopback.server.state.script == []  # both failures were consumed, then success


async def test_a_persistently_failing_model_fails_the_turn_and_the_next_turn_proceeds(
    loopback: Loopback,
) -> None:
    failed, ok = await loopback.run(["one", "two"], [("status", "500")] * 3)  # try + 2 retries

    assert loopback.report is not None
    assert loopback.report.committed == 2
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.code == "retries_exhausted"
    assert "500" in failed.error.message
    assert ok.status == "completed"
    # The failed turn wrote nothing to history; the next one saw an empty context.
    assert loopback.history_length == 2
    assert [m["role"] for m in loopback.server.state.prompts[-1].messages] == ["user"]


async def test_a_hanging_model_is_cut_off_by_the_request_timeout(loopback: Loopback) -> None:
    started = time.monotonic()
    [turn] = await loopback.run(
        ["anyone there?"], [("hang",), ("hang",)], model_timeout_s=0.5, model_max_retries=1
    )

    assert turn.status == "failed"
    assert turn.error is not None
    assert "Timeout" in turn.error.message
    assert time.monotonic() - started < 5


async def test_a_request_the_model_refuses_fails_at_once_without_retries(
    loopback: Loopback,
) -> None:
    [turn] = await loopback.run(["bad"], [("status", "400"), ("status", "400")])

    assert turn.status == "failed"
    assert turn.error is not None
    assert turn.error.code == "model_error"
    assert loopback.server.state.script == [("status", "400")]  # exactly one request made


async def test_the_turn_deadline_fails_a_turn_whose_retries_would_overrun_it(
    loopback: Loopback,
) -> None:
    started = time.monotonic()
    [turn] = await loopback.run(
        ["hi"], [("status", "429", "30")],
        model_timeout_s=1, turn_deadline_s=1, model_max_retries=5,
    )  # fmt: skip

    assert turn.status == "failed"
    assert turn.error is not None
    assert turn.error.code == "deadline_exceeded"
    assert time.monotonic() - started < 5


async def test_what_writing_the_deltas_meets_is_not_taken_for_a_model_failure(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    for met in (LockLost("gone"), TurnStopped("stopped"), RedisConnectionError("down")):

        async def on_delta(_: str, met: Exception = met) -> None:
            raise met

        with pytest.raises(type(met)):
            await call_model(
                EchoChatModel(),
                [HumanMessage(content="hi")],
                settings=settings,
                deadline=asyncio.get_running_loop().time() + 5,
                on_delta=on_delta,
                on_retry=lambda: None,
            )
