"""Loads the Lua scripts (one atomic operation per ``.lua`` file) and registers them on a client."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

SCRIPT_NAMES = ("accept", "begin", "commit", "delta", "release", "extend", "forget", "renudge")


@cache
def source(name: str) -> str:
    """The text of ``<name>.lua``; read once per process."""
    return resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Scripts:
    """Every script registered once on one client (sync or asyncio); calls use EVALSHA."""

    accept: Any
    begin: Any
    commit: Any
    delta: Any
    release: Any
    extend: Any
    forget: Any
    renudge: Any

    @classmethod
    def register(cls, client: Any) -> Scripts:
        return cls(**{name: client.register_script(source(name)) for name in SCRIPT_NAMES})
