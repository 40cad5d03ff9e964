"""Request bodies, list pages and the problem document of the HTTP API (the turn and
session shapes are the store's own records: ``shared.store.records``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from api.problems import MAX_DETAIL, MAX_LISTED_ERRORS, MAX_LOC_PARTS, MAX_TEXT
from shared.settings import Strategy
from shared.store import Turn

MAX_DEBOUNCE_S = 60.0
STRATEGY_DOC = (
    "Double texting: what this message does to the session's queued and running turns. "
    "`enqueue`: it waits its turn. `reject`: refused (`409 session-active`) while one "
    "is pending. `interrupt`: they are cancelled (their messages stay in history) and "
    "this one runs. `rollback`: they are cancelled and their messages dropped. "
    "`coalesce`: it joins the last one, and one model call answers them all (after "
    "`debounce_s` without a newer message). Unset: the session's default, else the "
    "tenant's, else the deployment's."
)


def _optional(schema: dict[str, Any]) -> None:
    """An optional member is left out, never null: no ``default: null`` in the schema."""
    schema.pop("default", None)


class TurnIn(BaseModel):
    """Body of ``POST /v1/sessions/{session_id}/turns``; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    content: str = Field(min_length=1, description="The user's message.")
    webhook: str | None = Field(
        default=None,
        max_length=2048,
        description=(
            "An http(s) URL that is sent the finished turn (`turn.completed` / "
            "`turn.failed` / `turn.cancelled`), signed per Standard Webhooks with the "
            "tenant's signing secret."
        ),
    )
    strategy: Strategy | None = Field(default=None, description=STRATEGY_DOC)
    debounce_s: Annotated[float, Field(ge=0, le=MAX_DEBOUNCE_S)] | None = Field(
        default=None,
        description=(
            "`coalesce`: how long to wait for a newer message before answering, in "
            "seconds (other strategies do not wait). Unset: the session's, the tenant's "
            "or the deployment's."
        ),
    )


class Defaults(BaseModel):
    """Double-texting defaults of a session or a tenant; a member left out (or null) is
    not chosen here, and the next level's applies."""

    model_config = ConfigDict(extra="forbid", strict=True)

    strategy: Strategy | None = Field(default=None, description=STRATEGY_DOC)
    debounce_s: Annotated[float, Field(ge=0, le=MAX_DEBOUNCE_S)] | None = Field(
        default=None, description="`coalesce`'s wait for a newer message, in seconds."
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


class FieldError(BaseModel):
    """One reason a request failed validation; it never echoes the input."""

    loc: list[str | int] = Field(
        max_length=MAX_LOC_PARTS,
        description="Where: `body`, `query`, `path` or `header`, then the field's path.",
    )
    msg: str = Field(max_length=MAX_TEXT)
    type: str = Field(
        max_length=MAX_TEXT,
        description="A machine-readable reason, e.g. `missing`, `string_too_short`.",
    )


class Problem(BaseModel):
    """Every error answer: an RFC 9457 problem, sent as ``application/problem+json``.

    Members other than these are extensions that belong to the problem's ``type``.
    Optional members are left out when they do not apply.
    """

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description=(
            "`urn:chatlane:problem:<kind>` (an identifier, not a page), or `about:blank` "
            "when the HTTP status says it all."
        ),
        examples=["urn:chatlane:problem:session-not-found"],
    )
    title: str = Field(description="A short summary of the problem type.")
    status: int = Field(ge=400, le=599, description="The HTTP status of this answer.")
    detail: Annotated[str, Field(max_length=MAX_DETAIL)] | SkipJsonSchema[None] = Field(
        default=None,
        description="What went wrong with this request.",
        json_schema_extra=_optional,
    )
    errors: (
        Annotated[list[FieldError], Field(max_length=MAX_LISTED_ERRORS)] | SkipJsonSchema[None]
    ) = Field(
        default=None,
        description=(
            f"`invalid-request` and `malformed-json`: the first {MAX_LISTED_ERRORS} field errors."
        ),
        json_schema_extra=_optional,
    )
    errors_truncated: bool | SkipJsonSchema[None] = Field(
        default=None,
        description="Set when more field errors were found than are listed.",
        json_schema_extra=_optional,
    )
    error_count: Annotated[int, Field(ge=0)] | SkipJsonSchema[None] = Field(
        default=None,
        description="With `errors_truncated`: how many field errors were found.",
        json_schema_extra=_optional,
    )
    turn_id: str | SkipJsonSchema[None] = Field(
        default=None,
        description=(
            "`idempotency-key-reused`: the turn the key was first used for; "
            "`session-active`: the pending turn; `turn-finished`: the turn."
        ),
        json_schema_extra=_optional,
    )
    turn_status: str | SkipJsonSchema[None] = Field(
        default=None,
        description="`turn-finished`: the status the turn finished with.",
        json_schema_extra=_optional,
    )
    checks: dict[str, str] | SkipJsonSchema[None] = Field(
        default=None,
        description="`not-ready`: each dependency's state.",
        json_schema_extra=_optional,
    )
