"""Building the chat model, and calling it with a timeout, bounded retries and a deadline."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime

import httpx
import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from shared.errors import ModelGaveUp, ModelUnavailable, TransientModelError
from shared.settings import Settings
from worker.echo import EchoChatModel

log = logging.getLogger(__name__)


def build_model(settings: Settings) -> BaseChatModel:
    """``echo`` (offline) or ``openai:<name>`` via ``langchain-openai``'s ``ChatOpenAI``.

    Raises ``ModelUnavailable`` naming the setting to fix. The OpenAI client's own
    retries are off: ``call_model`` owns the retry budget so it can honour the turn
    deadline and tag streamed deltas with the try.
    """
    if settings.model == "echo":
        return EchoChatModel(delay_s=settings.echo_delay_s)
    name = settings.model.removeprefix("openai:")
    if settings.openai_api_key is None:
        raise ModelUnavailable(
            f"CHATLANE_MODEL={settings.model} needs OPENAI_API_KEY (any value, for a "
            "server that checks none)"
        )
    try:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=name,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            timeout=settings.model_timeout_s,
            max_retries=0,
            streaming=True,
        )
    except Exception as exc:
        raise ModelUnavailable(f"CHATLANE_MODEL={settings.model}: {exc}") from exc


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


def _retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def classify(exc: BaseException) -> TransientModelError | None:
    """Map a failure to a retryable error, or None when retrying cannot help (e.g. a 400)."""
    if isinstance(exc, TransientModelError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (408, 409, 429) or status >= 500:
            return TransientModelError(
                f"model answered {status}", _retry_after_s(exc.response.headers)
            )
        return None
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return TransientModelError(f"model unreachable: {type(exc).__name__}")
    if isinstance(exc, httpx.TimeoutException | httpx.TransportError | TimeoutError):
        return TransientModelError(f"model unreachable: {type(exc).__name__}")
    return None


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
    deadline runs out.
    """
    loop = asyncio.get_running_loop()
    retries = 0
    while True:
        try:
            parts: list[str] = []
            async with asyncio.timeout_at(deadline):
                async for chunk in model.astream(messages):
                    text = chunk.text
                    if text:
                        parts.append(text)
                        await on_delta(text)
            return "".join(parts)
        except TimeoutError as exc:
            if loop.time() >= deadline:
                raise ModelGaveUp("deadline_exceeded", "the turn deadline passed") from exc
            transient = classify(exc)
            assert transient is not None
        except ModelGaveUp:
            raise
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
