"""Request bodies and list pages of the HTTP API (the turn and session shapes are the
store's own records: ``shared.store.records``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.store import Turn


class TurnIn(BaseModel):
    """Body of ``POST /v1/sessions/{session_id}/turns``; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    content: str = Field(min_length=1, description="The user's message.")
    webhook: str | None = Field(
        default=None,
        max_length=2048,
        description=(
            "An http(s) URL that is sent the finished turn (`turn.completed` / "
            "`turn.failed`), signed per Standard Webhooks with the tenant's signing secret."
        ),
    )


class Message(BaseModel):
    """One history entry, in LangChain's ``message_to_dict`` shape."""

    type: str
    data: dict[str, Any]


class MessagesPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[Message]
    offset: int
    limit: int
    total: int
    has_more: bool


class TurnsPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[Turn]
    total: int = Field(description="Turns in the session.")
    has_more: bool
    next_after: int | None = Field(
        description="Pass as `after` to get the next page (a sequence number); null at the end."
    )
