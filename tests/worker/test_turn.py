"""The turn pipeline in process, on real Redis, with the echo model and fake models."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import redis
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from shared import mailbox
from shared.keys import SessionKeys
from shared.schemas import Turn
from shared.scripts import Scripts
from shared.settings import Settings
from tests.worker.conftest import DepsFactory
from worker.turn import drain_session


def _events(
    client: redis.Redis, keys: SessionKeys, turn_id: str
) -> list[tuple[str, dict[str, Any]]]:
    return [(f["type"], json.loads(f["data"])) for _, f in client.xrange(keys.events(turn_id))]


def test_the_echo_model_names_the_message_and_the_context_it_saw(
    client: redis.Redis, scripts: Scripts, settings: Settings, make_deps: DepsFactory
) -> None:
    keys = SessionKeys(settings.key_prefix, "default", "echo")
    ids = [
        mailbox.accept(client, scripts, settings, keys, input_doc={"content": t}).turn_id
        for t in ("first", "second")
    ]
    report = drain_session(make_deps(settings), "default", "echo")

    assert report.committed == 2
    outputs = [Turn.from_record(client.hgetall(keys.turn(i))).output for i in ids]
    assert [o.content for o in outputs if o] == [
        "echo: first (saw 0 earlier messages)",
        "echo: second (saw 2 earlier messages)",
    ]
    events = _events(client, keys, ids[1])
    assert [kind for kind, _ in events][:2] == ["status", "status"]
    kind, final = events[-1]
    assert kind == "final"
    assert final["status"] == "completed"
    assert (final["seq"], final["attempt"]) == (2, 1)
    assert final["output"] == {"content": "echo: second (saw 2 earlier messages)"}
    assert final["started_at"] <= final["finished_at"]
    assert 0 < client.ttl(keys.events(ids[1])) <= settings.events_ttl_s
    streamed = "".join(data["text"] for kind, data in events if kind == "delta")
    assert streamed == "echo: second (saw 2 earlier messages)"
    assert client.get(keys.lock) is None


def test_the_history_window_and_system_prompt_shape_the_prompt(
    scripts: Scripts, make_settings: Any, make_deps: DepsFactory, client: redis.Redis
) -> None:
    settings: Settings = make_settings(history_window=4, system_prompt="Be brief.")
    keys = SessionKeys(settings.key_prefix, "default", "window")
    for n in range(4):
        mailbox.accept(client, scripts, settings, keys, input_doc={"content": f"m{n}"})
    drain_session(make_deps(settings), "default", "window")
    last = json.loads(client.lrange(keys.history, -1, -1)[0])
    assert last["data"]["content"] == "echo: m3 (saw 4 earlier messages)"


class _LockThief(BaseChatModel):
    """Streams a reply, but halfway through another worker takes the session lock."""

    client: Any
    lock_key: str

    @property
    def _llm_type(self) -> str:
        return "lock-thief"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        raise NotImplementedError

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="partial "))
        self.client.set(self.lock_key, "another-worker")
        yield ChatGenerationChunk(message=AIMessageChunk(content="reply"))


def test_a_worker_that_loses_its_lock_mid_reply_writes_nothing(
    client: redis.Redis, scripts: Scripts, settings: Settings, make_deps: DepsFactory
) -> None:
    keys = SessionKeys(settings.key_prefix, "default", "stolen")
    turn_id = mailbox.accept(client, scripts, settings, keys, input_doc={"content": "hi"}).turn_id
    model = _LockThief(client=client, lock_key=keys.lock)

    report = drain_session(make_deps(settings, model), "default", "stolen")

    assert report.lost_lock
    assert client.llen(keys.history) == 0
    assert client.hget(keys.turn(turn_id), "status") == "running"  # for the new holder to finish
    assert client.lrange(keys.mailbox, 0, -1) == [turn_id]


def test_a_turn_started_too_many_times_is_failed_instead_of_retried_forever(
    client: redis.Redis, scripts: Scripts, make_settings: Any, make_deps: DepsFactory
) -> None:
    settings: Settings = make_settings(max_turn_attempts=2)
    keys = SessionKeys(settings.key_prefix, "default", "poison")
    turn_id = mailbox.accept(client, scripts, settings, keys, input_doc={"content": "boom"}).turn_id
    for crashed in ("w1", "w2"):  # two workers took it and died without committing
        assert mailbox.begin(scripts, keys, crashed, settings) is not None
        client.delete(keys.lock)

    drain_session(make_deps(settings), "default", "poison")

    turn = Turn.from_record(client.hgetall(keys.turn(turn_id)))
    assert turn.status == "failed"
    assert turn.error is not None and turn.error.code == "attempts_exhausted"


def test_a_busy_session_is_left_to_its_holder(
    client: redis.Redis, scripts: Scripts, settings: Settings, make_deps: DepsFactory
) -> None:
    keys = SessionKeys(settings.key_prefix, "default", "held")
    mailbox.accept(client, scripts, settings, keys, input_doc={"content": "x"})
    client.set(keys.lock, "someone-else", px=5000)

    report = drain_session(make_deps(settings), "default", "held")

    assert report.busy and report.committed == 0
    assert client.llen(keys.mailbox) == 1


def test_the_heartbeat_keeps_the_lock_through_a_model_call_longer_than_the_lease(
    client: redis.Redis, scripts: Scripts, make_settings: Any, make_deps: DepsFactory
) -> None:
    settings: Settings = make_settings(lock_ttl_s=0.6, echo_delay_s=1.5)
    keys = SessionKeys(settings.key_prefix, "default", "slow")
    turn_id = mailbox.accept(client, scripts, settings, keys, input_doc={"content": "hi"}).turn_id

    report = drain_session(make_deps(settings), "default", "slow")

    assert report.committed == 1 and not report.lost_lock
    turn = Turn.from_record(client.hgetall(keys.turn(turn_id)))
    assert turn.status == "completed" and turn.attempt == 1


def test_a_head_refused_twice_is_left_to_the_sweeper_instead_of_spinning(
    client: redis.Redis, scripts: Scripts, settings: Settings, make_deps: DepsFactory
) -> None:
    class Refusing:
        """The real scripts, except that every commit is refused as out of order."""

        def __getattr__(self, name: str) -> Any:
            return getattr(scripts, name)

        def commit(self, **_: Any) -> list[str]:
            return ["OUT_OF_ORDER"]

    keys = SessionKeys(settings.key_prefix, "default", "refused")
    mailbox.accept(client, scripts, settings, keys, input_doc={"content": "x"})
    deps = dataclasses.replace(make_deps(settings), scripts=Refusing())

    report = drain_session(deps, "default", "refused")

    assert report.committed == 0
    assert client.get(keys.lock) is None  # released for a fresh worker
    assert client.llen(keys.mailbox) == 1
