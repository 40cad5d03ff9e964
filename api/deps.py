"""FastAPI dependencies: the app's state, the caller's tenant and session, ``?wait=``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from api.auth import authenticate
from api.state import AppState, state_of
from shared.keys import SESSION_ID_MAX, SESSION_ID_PATTERN, TURN_ID_PATTERN, SessionKeys
from shared.store.paging import CURSOR_PATTERN


async def get_state(request: Request) -> AppState:
    return state_of(request)


State = Annotated[AppState, Depends(get_state)]

SessionId = Annotated[
    str,
    Path(
        pattern=SESSION_ID_PATTERN,
        min_length=1,
        max_length=SESSION_ID_MAX,
        description="1–128 characters of A-Za-z0-9._:-, not only dots",
        examples=["user-42"],
    ),
]

TurnId = Annotated[str, Path(pattern=TURN_ID_PATTERN, examples=["turn_0123456789abcdef01234567"])]


async def wait_seconds(
    state: State,
    wait: Annotated[
        float,
        Query(
            ge=0,
            description="Seconds to wait for a terminal status (at most `CHATLANE_MAX_WAIT_S`).",
        ),
    ] = 0,
) -> float:
    """The ``?wait=`` of a request, within the deployment's cap (else a 422 problem)."""
    cap = state.settings.max_wait_s
    if wait > cap:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "wait"),
                    "msg": f"Input should be less than or equal to {cap:g}",
                    "type": "less_than_equal",
                }
            ]
        )
    return wait


Wait = Annotated[float, Depends(wait_seconds)]


Tenant = Annotated[str, Depends(authenticate)]
"""The tenant the request acts for (``api.auth``): from its API key alone."""


async def session_keys(state: State, tenant: Tenant, session_id: SessionId) -> SessionKeys:
    """The keys of the caller's own session ``session_id``: another tenant's session of the
    same id is a different session, so it reads exactly like a missing one."""
    return state.store.keys(tenant, session_id)


Keys = Annotated[SessionKeys, Depends(session_keys)]


PageLimit = Annotated[int, Query(ge=1, le=100)]
Before = Annotated[
    str | None,
    Query(
        pattern=CURSOR_PATTERN,
        description="The previous page's `next_before` (or a time in ms: older than that).",
    ),
]
