"""Building the chat model, and calling it with a timeout, bounded retries and a deadline.

``CHATLANE_MODEL`` names the model:

- ``echo`` — the built-in offline model;
- ``openai:<name>`` — any OpenAI-compatible server through chatlane's fast streaming
  client (``worker.openai_stream``);
- ``langchain-openai:<name>`` — ``langchain-openai``'s ``ChatOpenAI`` (tools, reasoning
  fields and the rest of its features, at the ``openai`` SDK's cost per token);
- ``import:<module>.<Class>`` — any LangChain chat model, built with
  ``CHATLANE_MODEL_KWARGS`` (a JSON object).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import httpx
import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from redis.exceptions import RedisError

from shared.errors import (
    LockLost,
    ModelError,
    ModelGaveUp,
    ModelUnavailable,
    TransientModelError,
    TurnStopped,
)
from shared.retry_after import retry_after_s
from shared.settings import Settings
from worker.echo import EchoChatModel

log = logging.getLogger(__name__)


@runtime_checkable
class TextStreaming(Protocol):
    """A model that can stream plain text, skipping LangChain's per-chunk objects."""

    def stream_text(self, messages: Sequence[BaseMessage]) -> AsyncIterator[str]: ...


def build_model(settings: Settings) -> BaseChatModel:
    """The model ``CHATLANE_MODEL`` names (see the module doc).

    Raises ``ModelUnavailable`` naming the setting to fix. Client-side retries are off:
    ``call_model`` owns the retry budget so it can honour the turn deadline and tag
    streamed deltas with the try.
    """
    spec = settings.model
    try:
        if spec == "echo":
            return EchoChatModel(delay_s=settings.echo_delay_s)
        kind, _, name = spec.partition(":")
        if kind == "import":
            return _imported(name, settings.model_kwargs)
        if settings.openai_api_key is None:
            raise ModelUnavailable(
                f"CHATLANE_MODEL={spec} needs OPENAI_API_KEY (any value, for a server "
                "that checks none)"
            )
        if kind == "openai":
            from worker.openai_stream import DEFAULT_BASE_URL, OpenAIStreamingChat

            return OpenAIStreamingChat(
                model_name=name,
                api_key=settings.openai_api_key,
                base_url=settings.openai_base_url or DEFAULT_BASE_URL,
                timeout_s=settings.model_timeout_s,
                model_kwargs=settings.model_kwargs,
            )
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=name,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            timeout=settings.model_timeout_s,
            max_retries=0,
            streaming=True,
            model_kwargs=settings.model_kwargs,
        )
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"CHATLANE_MODEL={spec}: {type(exc).__name__}: {exc}") from exc


def _imported(path: str, kwargs: dict[str, Any]) -> BaseChatModel:
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    model = cls(**kwargs)
    if not isinstance(model, BaseChatModel):
        raise TypeError(f"{path} is not a LangChain chat model")
    return model


class ModelSource:
    """The process's model: ``model`` if given, else built from the settings on first
    use. A build that fails is tried again for the next turn, and fails the turn at hand
    with the reason."""

    def __init__(self, settings: Settings, model: BaseChatModel | None = None) -> None:
        self._settings = settings
        self._model = model

    def get(self) -> BaseChatModel:
        if self._model is None:
            self._model = build_model(self._settings)
        return self._model

    async def aclose(self) -> None:
        """Close the model's HTTP connections (chatlane's client, or ChatOpenAI's)."""
        close = getattr(self._model, "aclose", None)
        if close is not None:
            await close()
            return
        client = getattr(self._model, "root_async_client", None)  # langchain-openai
        if client is not None:
            await client.close()


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level failures of the HTTP clients LangChain models run on: httpx, and
    httpx2 (what the ``openai`` SDK runs on since 3.x, where it is installed)."""
    found: list[type[BaseException]] = [httpx.TransportError, TimeoutError]
    try:
        import httpx2

        found.append(httpx2.TransportError)
    except ImportError:  # pragma: no cover - depends on the openai release
        pass
    return tuple(found)


TRANSPORT_ERRORS = _transport_errors()


def classify(exc: BaseException) -> TransientModelError | None:
    """Map a failure to a retryable error, or None when retrying cannot help (e.g. a 400)."""
    if isinstance(exc, TransientModelError):
        return exc
    if isinstance(exc, ModelError):
        return None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (408, 409, 429) or status >= 500:
            return TransientModelError(
                f"model answered {status}", retry_after_s(exc.response.headers)
            )
        return None
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return TransientModelError(f"model unreachable: {type(exc).__name__}")
    if isinstance(exc, TRANSPORT_ERRORS):  # e.g. a stream cut halfway, mid-iteration
        return TransientModelError(f"model unreachable: {type(exc).__name__}")
    return None


def text_stream(model: BaseChatModel, messages: list[BaseMessage]) -> AsyncIterator[str]:
    """The reply's text as it arrives: the fast path where the model has one, else
    LangChain's ``astream``."""
    if isinstance(model, TextStreaming):
        return model.stream_text(messages)
    return _texts(model, messages)


async def _texts(model: BaseChatModel, messages: list[BaseMessage]) -> AsyncIterator[str]:
    async for chunk in model.astream(messages):
        text = chunk.text
        if text:
            yield text


async def call_model(
    model: BaseChatModel,
    messages: list[BaseMessage],
    *,
    settings: Settings,
    deadline: float,
    on_delta: Callable[[str], Awaitable[None]],
    on_retry: Callable[[], None],
) -> str:
    """Stream one reply; retry transient failures within the budget and the deadline.

    ``deadline`` is an event-loop time. ``on_retry`` is called before every retry (so
    deltas can be tagged with the try). Raises ``ModelGaveUp`` when the budget or the
    deadline runs out, or the model refuses.
    """
    loop = asyncio.get_running_loop()
    retries = 0
    while True:
        try:
            parts: list[str] = []
            async with asyncio.timeout_at(deadline):
                async for text in text_stream(model, messages):
                    parts.append(text)
                    await on_delta(text)
            return "".join(parts)
        except TimeoutError as exc:
            if loop.time() >= deadline:
                raise ModelGaveUp("deadline_exceeded", "the turn deadline passed") from exc
            transient = classify(exc)
            assert transient is not None
        except (ModelGaveUp, LockLost, TurnStopped, RedisError):
            raise  # ours, or what writing the deltas met: not the model's failure
        except Exception as exc:
            found = classify(exc)
            if found is None:
                raise ModelGaveUp("model_error", f"{type(exc).__name__}: {exc}") from exc
            transient = found
        if retries >= settings.model_max_retries:
            raise ModelGaveUp(
                "retries_exhausted", f"{transient} (after {retries + 1} requests)"
            ) from transient
        pause = transient.retry_after_s
        if pause is None:
            pause = settings.retry_backoff_s * (2**retries) * (0.5 + random.random())
        if loop.time() + pause > deadline:
            raise ModelGaveUp("deadline_exceeded", f"{transient}; no time left to retry")
        log.info("model request failed (%s); retry %d in %.2fs", transient, retries + 1, pause)
        retries += 1
        await asyncio.sleep(pause)
        on_retry()
