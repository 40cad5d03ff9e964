"""The history store under LangChain's own ``RunnableWithMessageHistory``."""

from __future__ import annotations

import pytest
import redis
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store.history import RedisChatMessageHistory, assistant_doc, to_messages, user_doc


# langchain-core 1.x marks RunnableWithMessageHistory deprecated (pointing to LangGraph);
# it still ships and is still what many chatbots run, so the store must work under it.
@pytest.mark.filterwarnings("ignore::langchain_core._api.deprecation.LangChainDeprecationWarning")
def test_runnable_with_message_history_reads_and_appends_per_session(
    client: redis.Redis, settings: Settings
) -> None:
    model = GenericFakeChatModel(
        messages=iter([AIMessage("hi Ann"), AIMessage("hi Bob"), AIMessage("you are Ann")])
    )
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{question}")]
    )
    seen: list[int] = []

    def get_history(session_id: str) -> RedisChatMessageHistory:
        keys = SessionKeys(settings.key_prefix, "default", session_id)
        return RedisChatMessageHistory(client, keys, ttl_s=60)

    def record(value: object) -> object:
        seen.append(len(value.to_messages()))  # type: ignore[attr-defined]
        return value

    chain = RunnableWithMessageHistory(
        prompt | record | model,
        get_history,
        input_messages_key="question",
        history_messages_key="history",
    )
    chain.invoke({"question": "I am Ann"}, config={"configurable": {"session_id": "ann"}})
    chain.invoke({"question": "I am Bob"}, config={"configurable": {"session_id": "bob"}})
    chain.invoke({"question": "who am I?"}, config={"configurable": {"session_id": "ann"}})

    ann = get_history("ann").messages
    assert [m.content for m in ann] == ["I am Ann", "hi Ann", "who am I?", "you are Ann"]
    assert [type(m) for m in ann] == [HumanMessage, AIMessage, HumanMessage, AIMessage]
    assert [m.content for m in get_history("bob").messages] == ["I am Bob", "hi Bob"]
    assert seen == [1, 1, 3]  # Ann's third prompt held her own two messages, none of Bob's
    assert 0 < client.ttl(get_history("ann")._keys.history) <= 60


def test_the_workers_stored_messages_load_through_langchain(
    client: redis.Redis, settings: Settings
) -> None:
    keys = SessionKeys(settings.key_prefix, "default", "s")
    docs = [user_doc("q", turn_id="t1"), assistant_doc("a", turn_id="t1")]
    import json

    client.rpush(keys.history, *(json.dumps(d) for d in docs))
    via_langchain = RedisChatMessageHistory(client, keys).messages
    assert via_langchain == to_messages(docs)
    assert via_langchain[0].id == "t1:user"
    RedisChatMessageHistory(client, keys).clear()
    assert client.exists(keys.history) == 0
