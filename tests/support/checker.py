"""The isolation checker: what every model prompt and every session history must satisfy.

Each user message reads ``session=<id> turn=<n> canary=<hex>``, with a random canary,
so any message that strays into another session's prompt or history is caught.
"""

from __future__ import annotations

import re
import secrets
from collections import defaultdict
from dataclasses import dataclass, field

_CANARY = re.compile(r"canary=([0-9a-f]{16})")
_SESSION = re.compile(r"session=(\S+)")


def message_for(session: str, n: int) -> str:
    return f"session={session} turn={n} canary={secrets.token_hex(8)}"


def conversation_of(messages: list[dict[str, str]]) -> str:
    """The session a prompt belongs to, by its latest user message."""
    for m in reversed(messages):
        if m.get("role") == "user":
            found = _SESSION.search(str(m.get("content", "")))
            return found.group(1) if found else ""
    return ""


@dataclass
class Observation:
    """What a run produced. ``sent`` lists each session's user messages in acceptance order."""

    sent: dict[str, list[str]]
    prompts: list[list[dict[str, str]]]
    histories: dict[str, list[tuple[str, str]]]
    statuses: dict[str, str] = field(default_factory=dict)
    window: int = 1_000_000


def check(obs: Observation) -> list[str]:
    """Every violation of isolation, exactly-once, order and completion; empty when clean."""
    owner = {c: s for s, msgs in obs.sent.items() for m in msgs for c in _CANARY.findall(m)}
    problems: list[str] = []

    for i, prompt in enumerate(obs.prompts):
        session = conversation_of(prompt)
        text = " ".join(str(m.get("content", "")) for m in prompt)
        strays = {owner.get(c, "?") for c in _CANARY.findall(text)} - {session}
        if strays:
            problems.append(f"prompt {i} for {session} holds messages of {sorted(strays)}")
            continue
        users = [str(m["content"]) for m in prompt if m.get("role") == "user"]
        sent = obs.sent.get(session, [])
        if not users or users[-1] not in sent:
            problems.append(f"prompt {i} for {session}: its latest message was never sent")
            continue
        k = sent.index(users[-1])
        expected = sent[max(0, k - obs.window // 2) : k + 1]
        if users != expected:
            problems.append(
                f"prompt {i} for {session}: context {len(users) - 1} earlier "
                f"messages, not the {len(expected) - 1} accepted before it"
            )

    for session, sent in obs.sent.items():
        history = obs.histories.get(session, [])
        users = [content for role, content in history if role == "human"]
        roles = [role for role, _ in history]
        if users != sent:
            foreign = set(users) - set(sent)
            if foreign:
                problems.append(f"history of {session} holds {len(foreign)} foreign messages")
            else:
                lost = len(set(sent) - set(users))
                duplicated = len(users) - len(set(users))
                ordered = users == sorted(users, key=sent.index)
                problems.append(
                    f"history of {session}: {lost} lost, {duplicated} duplicated, "
                    f"order {'kept' if ordered else 'broken'}"
                )
        elif roles != ["human", "ai"] * len(sent):
            problems.append(f"history of {session}: replies are not paired with their messages")

    counts: dict[str, int] = defaultdict(int)
    for status in obs.statuses.values():
        counts[status] += 1
    unfinished = {s: n for s, n in counts.items() if s != "completed"}
    if unfinished:
        problems.append(f"turns not completed: {dict(unfinished)}")
    return problems
