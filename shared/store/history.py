"""Session history: a Redis list of LangChain ``message_to_dict`` JSON documents.

The worker's hot path moves plain dicts (``user_doc`` / ``assistant_doc``) and only
builds LangChain messages for the model call; ``RedisChatMessageHistory`` exposes the
same list as a ``BaseChatMessageHistory`` so LangChain's ``RunnableWithMessageHistory``
works over it too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    message_to_dict,
    messages_from_dict,
)

from shared.keys import SessionKeys


def user_doc(content: str, *, turn_id: str) -> dict[str, Any]:
    """The stored form of a turn's user message (loadable by ``messages_from_dict``)."""
    return {"type": "human", "data": {"type": "human", "content": content, "id": f"{turn_id}:user"}}


def assistant_doc(content: str, *, turn_id: str) -> dict[str, Any]:
    return {"type": "ai", "data": {"type": "ai", "content": content, "id": f"{turn_id}:assistant"}}


_CLASSES: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "ai": AIMessage,
    "system": SystemMessage,
}


def to_messages(docs: Sequence[dict[str, Any]]) -> list[BaseMessage]:
    """Build LangChain messages from stored documents.

    Plain user/assistant/system entries take a fast path; anything else goes through
    LangChain's own ``messages_from_dict``.
    """
    out: list[BaseMessage] = []
    for doc in docs:
        cls = _CLASSES.get(doc["type"])
        data = doc["data"]
        if cls is not None and data.keys() <= {"type", "content", "id"}:
            out.append(cls(content=data["content"], id=data.get("id")))
        else:
            out.extend(messages_from_dict([doc]))
    return out


def trim_to_pairs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop leading assistant entries so the window never starts mid-exchange."""
    start = 0
    while start < len(docs) and docs[start]["type"] != "human":
        start += 1
    return docs[start:]


class RedisChatMessageHistory(BaseChatMessageHistory):
    """``BaseChatMessageHistory`` over a session's history list.

    Writes are one ``MULTI`` (append + TTL refresh). Appends through this class are
    not ordered against the worker's turns; it exists for reading, tooling and use
    under LangChain's ``RunnableWithMessageHistory``.
    """

    def __init__(self, client: Any, keys: SessionKeys, *, ttl_s: int | None = None) -> None:
        self._client = client
        self._keys = keys
        self._ttl_s = ttl_s

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        raw = self._client.lrange(self._keys.history, 0, -1)
        return messages_from_dict([json.loads(doc) for doc in raw])

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        if not messages:
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.rpush(self._keys.history, *(json.dumps(message_to_dict(m)) for m in messages))
        if self._ttl_s is not None:
            pipe.expire(self._keys.history, self._ttl_s)
        pipe.execute()

    def clear(self) -> None:
        self._client.delete(self._keys.history)
