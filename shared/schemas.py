"""Wire shapes: the HTTP API's request and response bodies and the turn record they come from."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TurnStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
TurnKind = Literal["message", "clear"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class TurnIn(BaseModel):
    """Body of ``POST /v1/sessions/{session_id}/turns``; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    content: str = Field(min_length=1, description="The user's message.")


class TurnOutput(BaseModel):
    content: str


class TurnError(BaseModel):
    code: str
    message: str


class Turn(BaseModel):
    """A turn as the API shows it; built from the Redis turn record."""

    id: str
    object: Literal["turn"] = "turn"
    session_id: str
    kind: TurnKind
    seq: int
    status: TurnStatus
    attempt: int
    input: dict[str, Any] | None
    output: TurnOutput | None = None
    error: TurnError | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_record(cls, record: dict[str, str]) -> Turn:
        """Parse the turn hash written by ``accept.lua`` / ``begin.lua`` / ``commit.lua``."""
        return cls(
            id=record["id"],
            session_id=record["session_id"],
            kind=record["kind"],
            seq=int(record["seq"]),
            status=record["status"],
            attempt=int(record.get("attempt", 0)),
            input=json.loads(record["input"]) if record.get("input") else None,
            output=TurnOutput.model_validate_json(record["output"]) if "output" in record else None,
            error=TurnError.model_validate_json(record["error"]) if "error" in record else None,
            created_at=_from_ms(record["created_at"]),
            started_at=_from_ms(record["started_at"]) if "started_at" in record else None,
            finished_at=_from_ms(record["finished_at"]) if "finished_at" in record else None,
        )

    def finished_as(self, final: dict[str, Any]) -> Turn:
        """This turn updated with its final event's data (as ``commit.lua`` wrote it)."""
        return self.model_copy(
            update={
                "status": final["status"],
                "attempt": final["attempt"],
                "output": TurnOutput(**final["output"]) if "output" in final else None,
                "error": TurnError(**final["error"]) if "error" in final else None,
                "started_at": _from_ms(final["started_at"]),
                "finished_at": _from_ms(final["finished_at"]),
            }
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


def _from_ms(value: str | int) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of every timestamp in a turn record."""
    return time.time_ns() // 1_000_000
