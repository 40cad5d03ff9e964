"""Per-app state owned by the lifespan, and FastAPI dependencies that hand it to routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request

from api.metrics import ApiMetrics
from shared.keys import SESSION_ID_PATTERN, SessionKeys
from shared.nudge import AsyncNudger
from shared.settings import Settings


@dataclass(frozen=True, slots=True)
class AppState:
    """Clients the lifespan opened; routes never build their own."""

    settings: Settings
    redis: Any
    scripts: Any
    nudger: AsyncNudger
    metrics: ApiMetrics


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.chatlane
    return state


State = Annotated[AppState, Depends(get_state)]

SessionId = Annotated[
    str,
    Path(
        pattern=SESSION_ID_PATTERN,
        description="1–128 characters of A-Za-z0-9._:-",
        examples=["user-42"],
    ),
]


def resolve_tenant(state: AppState) -> str:
    """The tenant a request acts for. One tenant until API keys map to tenants."""
    return state.settings.default_tenant


def session_keys(state: AppState, session_id: str) -> SessionKeys:
    return SessionKeys(state.settings.key_prefix, resolve_tenant(state), session_id)
