"""The one typed settings object. This is the only module that reads the environment."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Strategy = Literal["enqueue", "reject", "interrupt", "rollback", "coalesce"]


class Settings(BaseSettings):
    """Every knob of chatlane, read once at the process edge (``CHATLANE_`` prefix).

    Durations are seconds, sizes are bytes or characters as named. Tests build
    ``Settings(...)`` explicitly and pass it down; nothing reads ``os.environ`` later.
    """

    # Errors never echo what was given: it may be a URL with a password, or the OpenAI key.
    model_config = SettingsConfigDict(
        env_prefix="CHATLANE_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # URLs may hold a password: kept out of ``repr`` (logs, tracebacks); log ``masked()``.
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    broker_url: str | None = Field(default=None, repr=False)
    allow_eviction: bool = False
    settle_heap: bool = True  # shared/heap.py, once a process has started
    data_dir: Path = Path(".chatlane")
    key_prefix: str = Field(default="chatlane", pattern=r"^[A-Za-z0-9_.-]{1,32}$")

    model: str = Field(
        default="echo", pattern=r"^(echo|openai:.+|langchain-openai:.+|import:[\w.]+\.\w+)$"
    )
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "CHATLANE_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "CHATLANE_OPENAI_BASE_URL")
    )
    system_prompt: str = ""
    echo_delay_s: float = Field(default=0.0, ge=0)

    history_window: int = Field(default=20, ge=0)
    session_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    events_ttl_s: int = Field(default=3600, ge=1)
    lock_ttl_s: float = Field(default=30.0, gt=0.3)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    model_timeout_s: float = Field(default=60.0, gt=0)
    model_max_retries: int = Field(default=3, ge=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    turn_deadline_s: float = Field(default=300.0, gt=0)
    max_turn_attempts: int = Field(default=3, ge=1)
    stream_flush_s: float = Field(default=0.05, ge=0)

    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    max_message_chars: int = Field(default=32_000, ge=1)
    max_pending_turns: int = Field(default=1000, ge=1, le=5000)  # scripts read them at once
    max_wait_s: float = Field(default=60.0, ge=0)
    max_waiters: int = Field(default=10_000, ge=0)
    keepalive_s: float = Field(default=15.0, gt=0)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=1)
    default_tenant: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    max_history_messages: int = Field(default=10_000, ge=2)

    # Who may call the API (shared/apikeys.py, api/auth.py). ``auto``: an API key is
    # required once any key exists; until then one anonymous tenant (``default_tenant``)
    # is served to loopback clients only. ``keys``: a key is always required. ``open``:
    # anyone is the anonymous tenant (only behind something else that authenticates).
    auth: Literal["auto", "keys", "open"] = "auto"
    # Per tenant, over a sliding minute, held in Redis across API replicas; 0 = no limit
    # (the default: each budget costs a Redis round trip per request or turn).
    rate_requests_per_minute: int = Field(default=0, ge=0)
    rate_tokens_per_minute: int = Field(default=0, ge=0)
    # Tokens a reply is assumed to cost before the model has run (settled afterwards).
    reply_token_estimate: int = Field(default=512, ge=0)

    # Double texting: what a message does to its session's queued and running turns
    # unless the request, the session or the tenant chose (enqueue, reject, interrupt,
    # rollback, coalesce); how long coalesce waits for more after the last message; how
    # many turns one coalesced model call answers at most.
    double_texting: Strategy = "enqueue"
    coalesce_debounce_s: float = Field(default=0.0, ge=0, le=60)
    max_coalesced_turns: int = Field(default=50, ge=1, le=1000)

    worker_concurrency: int = Field(default=1000, ge=1)
    # A worker serves its Prometheus metrics at http://<host>:<port>/metrics when a port is
    # set (one port per worker process on a host).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    webhook_allow_private: bool = False
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_s: float = Field(default=2.0, ge=0)
    webhook_max_backoff_s: float = Field(default=3600.0, ge=0)
    webhook_rotation_s: int = Field(default=24 * 3600, ge=0)
    # Replies to messaging channels: a platform API on a private address (a loopback fake,
    # a proxy of your own) only when allowed; retries back off exponentially with jitter.
    channel_allow_private: bool = False
    channel_timeout_s: float = Field(default=15.0, gt=0)
    channel_max_attempts: int = Field(default=10, ge=1)
    channel_backoff_s: float = Field(default=1.0, ge=0)
    channel_max_backoff_s: float = Field(default=600.0, ge=0)
    queue: str = "chatlane"

    # HTTP hardening (api/guards.py, api/http11.py; docs/security.md). The head
    # (request line and headers) must arrive within http_head_timeout_s and weigh at most
    # http_max_head_bytes; a body must arrive within http_body_timeout_s; an idle
    # keep-alive connection is closed after http_idle_timeout_s; a process holds at most
    # http_max_connections connections (SSE streams and long polls included).
    http_head_timeout_s: float = Field(default=10.0, gt=0)
    http_body_timeout_s: float = Field(default=30.0, gt=0)
    http_idle_timeout_s: int = Field(default=5, ge=1)
    http_max_head_bytes: int = Field(default=64 * 1024, ge=4096)
    http_max_connections: int = Field(default=32_768, ge=1)
    # Origins allowed to call the API from a browser, comma-separated; none by default.
    cors_origins: str = ""

    @model_validator(mode="after")
    def _deadline_covers_a_model_call(self) -> Settings:
        if self.turn_deadline_s < self.model_timeout_s:
            raise ValueError("CHATLANE_TURN_DEADLINE_S must be at least CHATLANE_MODEL_TIMEOUT_S")
        return self

    @cached_property
    def effective_broker_url(self) -> str:
        """The Celery broker: ``CHATLANE_BROKER_URL``, else the session-data Redis."""
        return self.broker_url or self.redis_url

    @property
    def lock_ttl_ms(self) -> int:
        return int(self.lock_ttl_s * 1000)

    @property
    def session_ttl_ms(self) -> int:
        return self.session_ttl_s * 1000

    @property
    def events_ttl_ms(self) -> int:
        """A session's event stream is kept this long after its last event (never beyond
        the session), and events older than this are trimmed."""
        return min(self.events_ttl_s, self.session_ttl_s) * 1000

    @property
    def visibility_timeout_s(self) -> int:
        """Broker redelivery horizon, well above a turn's deadline (correctness never needs it)."""
        return int(max(3600.0, 4 * self.turn_deadline_s))
