"""``/v1/defaults``: the calling tenant's defaults for new turns (double texting)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import State, Tenant
from api.schemas import Defaults
from shared.store import TurnDefaults

router = APIRouter(prefix="/v1/defaults", tags=["defaults"])


@router.get("", response_model=Defaults)
async def get_defaults(state: State, tenant: Tenant) -> Defaults:
    """This tenant's defaults; null: the deployment's apply."""
    found = await state.defaults.get(tenant, fresh=True)
    return Defaults(strategy=found.strategy, debounce_s=found.debounce_s)


@router.put("", response_model=Defaults)
async def set_defaults(body: Defaults, state: State, tenant: Tenant) -> Defaults:
    """Set this tenant's defaults for turns whose request and session do not choose.
    Every API replica applies them within two seconds."""
    await state.defaults.set(tenant, TurnDefaults(body.strategy, body.debounce_s))
    return body
