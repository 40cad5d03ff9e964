"""What the lifespan opens for one app: every client a request may use."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from api.metrics import ApiMetrics
from shared.apikeys import KeyRing
from shared.quotas import Quotas
from shared.settings import Settings
from shared.store import EventHub, SessionStore
from shared.store.dead_turns import DeadTurns
from shared.store.defaults import TenantDefaults
from shared.store.outbox import Outbox
from shared.wakeup import WakeUps


@dataclass(slots=True)
class AppState:
    """Clients the lifespan opened; routes never build their own."""

    settings: Settings
    store: SessionStore
    hub: EventHub
    wake_ups: WakeUps
    metrics: ApiMetrics
    outbox: Outbox
    keyring: KeyRing
    quotas: Quotas
    defaults: TenantDefaults
    dead_turns: DeadTurns
    eviction_checked: bool = False


def state_of(request: Request) -> AppState:
    """The state the app's lifespan opened."""
    state: AppState = request.app.state.chatlane
    return state
