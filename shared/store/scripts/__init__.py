"""The Lua scripts, one atomic operation per ``.lua`` file, each sent with EVALSHA.

Every script is ``_prelude.lua`` followed by its own file, and takes its named
arguments as one JSON document in ARGV[1]. A server that lost its script cache (a
restart, a failover) answers NOSCRIPT once; the script is then loaded and called again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import orjson
from redis.exceptions import NoScriptError

NAMES = (
    "accept",
    "begin",
    "commit",
    "delta",
    "extend",
    "release",
    "rewake",
    "forget",
    "claim",
    "cancel",
    "route",
    "reply_once",
    "settle",
)


@cache
def source(name: str) -> str:
    """The full text sent to Redis for ``<name>.lua``; read once per process."""
    files = resources.files(__package__)
    prelude = files.joinpath("_prelude.lua").read_text(encoding="utf-8")
    return prelude + files.joinpath(f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str

    def queue(self, pipe: Any, keys: Sequence[str], args: Mapping[str, Any]) -> None:
        """Add a call to a pipeline (its reply is that pipeline's next result)."""
        pipe.evalsha(self.sha, len(keys), *keys, orjson.dumps(args))

    def packer(
        self, keys: Sequence[str], fixed: Mapping[str, Any], field: str
    ) -> Callable[[str], bytes]:
        """``pack`` for calls that differ only in the string ``field``: everything else is
        encoded once, so each call costs one ``orjson.dumps`` of that string."""
        head = self.pack(keys, {})[: -len(b"$2\r\n{}\r\n")]
        opening = orjson.dumps(fixed)[:-1] + (b',"' if fixed else b'{"') + field.encode() + b'":'

        def pack(value: str) -> bytes:
            doc = opening + orjson.dumps(value) + b"}"
            return b"%b$%d\r\n%b\r\n" % (head, len(doc), doc)

        return pack

    def pack(self, keys: Sequence[str], args: Mapping[str, Any]) -> bytes:
        """A call as the bytes of one RESP command (for ``SessionStore.send_packed``)."""
        parts = [b"EVALSHA", self.sha.encode(), str(len(keys)).encode()]
        parts += [key.encode() for key in keys]
        parts.append(orjson.dumps(args))
        out = [b"*%d\r\n" % len(parts)]
        for part in parts:
            out.append(b"$%d\r\n%b\r\n" % (len(part), part))
        return b"".join(out)

    async def __call__(self, client: Any, keys: Sequence[str], args: Mapping[str, Any]) -> Any:
        payload = orjson.dumps(args)
        try:
            return await client.evalsha(self.sha, len(keys), *keys, payload)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, payload)


def _script(name: str) -> Script:
    text = source(name)
    return Script(name, text, hashlib.sha1(text.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class Scripts:
    """Every script, by name; building it does no I/O."""

    accept: Script
    begin: Script
    commit: Script
    delta: Script
    extend: Script
    release: Script
    rewake: Script
    forget: Script
    claim: Script
    cancel: Script
    route: Script
    reply_once: Script
    settle: Script

    @classmethod
    def load(cls) -> Scripts:
        return cls(**{name: _script(name) for name in NAMES})

    async def register(self, client: Any) -> None:
        """Load every script on the server (after NOSCRIPT inside a pipeline)."""
        for name in NAMES:
            await client.script_load(getattr(self, name).source)
