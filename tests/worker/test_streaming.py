"""Streaming replies through both OpenAI clients against a loopback server that streams
as the real API does: drops and stalls mid-stream, deltas tagged with the try."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from shared.settings import Settings
from shared.store import Turn
from tests.support.streaming_server import StreamingModelServer
from tests.worker.conftest import RuntimeFactory
from worker.openai_stream import SSEText
from worker.turn import drain_session

WORDS = " ".join(f"w{i}" for i in range(30))


@pytest.fixture
def stub() -> Iterator[StreamingModelServer]:
    with StreamingModelServer(tokens=30, interval_s=0.005) as server:
        yield server


@pytest.fixture(params=["openai", "langchain-openai"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _settings(
    make: Callable[..., Settings], stub: StreamingModelServer, kind: str, **kw: Any
) -> Settings:
    return make(
        model=f"{kind}:loopback",
        openai_base_url=stub.base_url,
        openai_api_key="test-key",
        stream_flush_s=0,
        **{"model_max_retries": 2, **kw},
    )


async def _one_turn(
    rt: Any, client: redis.Redis, session: str, content: str = "hi"
) -> tuple[Turn, list[dict[str, Any]]]:
    keys = rt.store.keys("default", session)
    accepted = await rt.store.accept(keys, input_doc={"content": content})
    await drain_session(rt, "default", session)
    turn = Turn.from_json(client.hget(keys.turns, accepted.turn_id))  # type: ignore[arg-type]
    deltas = [json.loads(f["data"]) for _, f in client.xrange(keys.events) if f["type"] == "delta"]
    return turn, deltas


async def test_a_reply_streams_in_deltas_that_add_up_to_the_committed_text(
    client: redis.Redis,
    make_settings: Callable[..., Settings],
    make_runtime: RuntimeFactory,
    stub: StreamingModelServer,
    kind: str,
) -> None:
    rt = make_runtime(_settings(make_settings, stub, kind))
    turn, deltas = await _one_turn(rt, client, "streamed")
    assert turn.status == "completed" and turn.output is not None
    assert turn.output.content == WORDS
    assert len(deltas) > 1  # written as it streamed, not at the end
    assert "".join(d["text"] for d in deltas) == WORDS


async def test_a_stream_dropped_halfway_is_retried_and_its_text_marked_abandoned(
    client: redis.Redis,
    make_settings: Callable[..., Settings],
    make_runtime: RuntimeFactory,
    stub: StreamingModelServer,
    kind: str,
) -> None:
    stub.script = [("drop_after", 12)]
    rt = make_runtime(_settings(make_settings, stub, kind))
    turn, deltas = await _one_turn(rt, client, "dropped")
    assert turn.status == "completed" and turn.output is not None
    assert turn.output.content == WORDS  # the second request's reply, whole
    abandoned = "".join(d["text"] for d in deltas if d["try"] == 0)
    assert abandoned and WORDS.startswith(abandoned)
    assert "".join(d["text"] for d in deltas if d["try"] == 1) == WORDS


async def test_a_stalled_stream_is_cut_off_by_the_model_timeout_and_retried(
    client: redis.Redis,
    make_settings: Callable[..., Settings],
    make_runtime: RuntimeFactory,
    stub: StreamingModelServer,
    kind: str,
) -> None:
    stub.script = [("stall_after", 5)]
    rt = make_runtime(_settings(make_settings, stub, kind, model_timeout_s=0.5))
    started = time.monotonic()
    turn, _ = await _one_turn(rt, client, "stalled")
    assert turn.status == "completed" and turn.output is not None
    assert turn.output.content == WORDS
    assert time.monotonic() - started < 5


async def test_a_rate_limit_mid_conversation_is_honoured_then_the_reply_streams(
    client: redis.Redis,
    make_settings: Callable[..., Settings],
    make_runtime: RuntimeFactory,
    stub: StreamingModelServer,
    kind: str,
) -> None:
    stub.script = [("status", 429, 1)]
    rt = make_runtime(_settings(make_settings, stub, kind))
    started = time.monotonic()
    turn, _ = await _one_turn(rt, client, "limited")
    assert turn.status == "completed"
    assert time.monotonic() - started >= 1.0
    assert stub.stats.statuses[429] == 1


def test_the_event_splitter_handles_events_cut_anywhere_and_crlf_lines() -> None:
    events = (
        b"".join(
            b'data: {"choices":[{"index":0,"delta":{"content":"' + w.encode() + b'"}}]}\r\n\r\n'
            for w in ("a", "b", "c")
        )
        + b": keep-alive\n\ndata: [DONE]\n\n"
    )
    for cut in range(1, len(events)):
        parser = SSEText()
        text = parser.feed(events[:cut]) + parser.feed(events[cut:])
        assert text == "abc" and parser.done, cut
