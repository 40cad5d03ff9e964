"""The built-in offline ``echo`` model: deterministic, streaming, and it shows what it saw."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

_TOKEN = re.compile(r"\S+\s*|\s+")


def echo_reply(messages: list[BaseMessage]) -> str:
    """``echo: <latest user message> (saw N earlier messages)``; system messages don't count."""
    dialogue = [m for m in messages if m.type != "system"]
    latest = next((m for m in reversed(dialogue) if isinstance(m, HumanMessage)), None)
    text = latest.text if latest is not None else ""
    return f"echo: {text} (saw {len(dialogue) - 1 if dialogue else 0} earlier messages)"


def _chunks(messages: list[BaseMessage]) -> Iterator[tuple[str, ChatGenerationChunk]]:
    """The reply, word by word (each with its trailing space)."""
    for token in _TOKEN.findall(echo_reply(messages)):
        yield token, ChatGenerationChunk(message=AIMessageChunk(content=token))


class EchoChatModel(BaseChatModel):
    """Answers instantly (or after ``delay_s`` seconds), streaming word by word."""

    delay_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "chatlane-echo"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay_s:
            time.sleep(self.delay_s)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(echo_reply(messages)))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.delay_s:
            time.sleep(self.delay_s)
        for token, chunk in _chunks(messages):
            if run_manager is not None:
                run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        for token, chunk in _chunks(messages):
            if run_manager is not None:
                await run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk
