"""The checker can fail: run against the naive pattern behind the incident, under the same
load (100 users × 5 concurrent turns, ``ChatOpenAI`` against the loopback server), it
reports mix-ups and lost writes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_openai import ChatOpenAI

from tests.support.checker import Observation, check, conversation_of, message_for
from tests.support.openai_server import ModelServer

USERS = 100
TURNS = 5


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    with ModelServer(latency_s=0.02, conversation_of=conversation_of) as server:
        yield server


def _load(run_turn: Callable[[str, str], None]) -> dict[str, list[str]]:
    """Every user's turns at once, as concurrent HTTP handlers would run them."""
    sent = {
        f"user-{i:03d}": [message_for(f"user-{i:03d}", n) for n in range(TURNS)]
        for i in range(USERS)
    }
    with ThreadPoolExecutor(max_workers=USERS) as pool:
        futures = [pool.submit(run_turn, s, m) for s, msgs in sent.items() for m in msgs]
        for future in futures:
            future.result()
    return sent


def _roles(messages: list[BaseMessage]) -> list[tuple[str, str]]:
    return [(m.type, str(m.content)) for m in messages]


def _model(server: ModelServer) -> ChatOpenAI:
    return ChatOpenAI(model="loopback", base_url=server.base_url, api_key="k", max_retries=0)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::langchain_core._api.deprecation.LangChainDeprecationWarning")
def test_one_shared_langchain_memory_mixes_users_up(model_server: ModelServer) -> None:
    memory = InMemoryChatMessageHistory()  # module-level memory, shared by every request
    chain = RunnableWithMessageHistory(
        ChatPromptTemplate.from_messages(
            [MessagesPlaceholder("history", n_messages=10), ("human", "{q}")]
        )
        | _model(model_server),
        lambda _session_id: memory,
        input_messages_key="q",
        history_messages_key="history",
    )

    sent = _load(lambda s, m: chain.invoke({"q": m}, {"configurable": {"session_id": s}}))

    problems = check(
        Observation(
            sent=sent,
            prompts=[p.messages for p in model_server.state.prompts],
            histories={s: _roles(memory.messages) for s in sent},
        )
    )
    assert any("holds messages of" in p for p in problems)
    assert any("foreign messages" in p for p in problems)


def test_unsynchronized_per_session_memory_loses_writes(model_server: ModelServer) -> None:
    store: dict[str, list[BaseMessage]] = {}
    model = _model(model_server)

    def run_turn(session: str, message: str) -> None:
        history = list(store.get(session, []))  # read ...
        reply = model.invoke([*history, HumanMessage(message)])  # ... call the model ...
        store[session] = [*history, HumanMessage(message), AIMessage(str(reply.content))]  # write

    sent = _load(run_turn)

    problems = check(
        Observation(
            sent=sent,
            prompts=[p.messages for p in model_server.state.prompts],
            histories={s: _roles(store.get(s, [])) for s in sent},
        )
    )
    assert any(" lost," in p for p in problems)
    assert not any("holds messages of" in p for p in problems)  # per-session, so no mix-ups
