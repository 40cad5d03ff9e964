"""Building the chat model and calling it with a timeout, bounded retries and a deadline."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

import httpx
import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from shared.errors import LockLost, ModelGaveUp, TransientModelError
from shared.settings import Settings
from worker.echo import EchoChatModel

log = logging.getLogger(__name__)


def build_model(settings: Settings) -> BaseChatModel:
    """``echo`` (offline) or ``openai:<name>`` via ``langchain-openai``'s ``ChatOpenAI``.

    The OpenAI client's own retries are off: ``call_model`` owns the retry budget so it
    can honour the turn deadline and tag streamed deltas with the attempt.
    """
    if settings.model == "echo":
        return EchoChatModel(delay_s=settings.echo_delay_s)
    from langchain_openai import ChatOpenAI

    key = settings.openai_api_key
    return ChatOpenAI(
        model=settings.model.removeprefix("openai:"),
        api_key=key if key is not None else None,
        base_url=settings.openai_base_url,
        timeout=settings.model_timeout_s,
        max_retries=0,
        streaming=True,
    )


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


def call_model(
    model: BaseChatModel,
    messages: list[BaseMessage],
    *,
    settings: Settings,
    deadline: float,
    lost: threading.Event,
    on_delta: Callable[[str], None],
    on_attempt: Callable[[], None],
) -> str:
    """Stream one reply; retry transient failures within the budget and the deadline.

    ``deadline`` is a ``time.monotonic()`` value. ``on_attempt`` is called before every
    retry (so deltas can be tagged). Raises ``ModelGaveUp`` when the budget or the
    deadline runs out, ``LockLost`` when the heartbeat lost the session lock.
    """
    retries = 0
    while True:
        try:
            parts: list[str] = []
            for chunk in model.stream(messages):
                if lost.is_set():
                    raise LockLost("session lock lost during the model call")
                if time.monotonic() > deadline:
                    raise ModelGaveUp("deadline_exceeded", "the turn deadline passed mid-reply")
                text = chunk.text
                if text:
                    parts.append(text)
                    on_delta(text)
            return "".join(parts)
        except (LockLost, ModelGaveUp):
            raise
        except Exception as exc:
            transient = classify(exc)
            if transient is None:
                raise ModelGaveUp("model_error", f"{type(exc).__name__}: {exc}") from exc
            if retries >= settings.model_max_retries:
                raise ModelGaveUp(
                    "retries_exhausted", f"{transient} (after {retries + 1} attempts)"
                ) from exc
            pause = transient.retry_after_s
            if pause is None:
                pause = settings.retry_backoff_s * (2**retries) * (0.5 + random.random())
            if time.monotonic() + pause > deadline:
                raise ModelGaveUp(
                    "deadline_exceeded", f"{transient}; no time left to retry"
                ) from exc
            log.info("model call failed (%s); retry %d in %.2fs", transient, retries + 1, pause)
            retries += 1
            time.sleep(pause)
            on_attempt()
