"""The ledger check of what the outbox sent: each webhook delivery and each channel reply
held against the turns the ledger matched to their records (``webhook_*``, ``reply_*``
and ``foreign`` violations, as ``tests.support.ledger_check`` describes them)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

from shared.channels.endpoints import PLATFORMS
from shared.channels.split import split
from shared.store.records import TERMINAL_STATUSES, ChannelRoute
from tests.support.ledger import (
    Bot,
    Entry,
    Hook,
    Kind,
    Ledger,
    Send,
    SessionKey,
    Violation,
    session_name,
    strangers_in,
)
from tests.support.turn_checker import TurnView

Where = tuple[str, str, str | None]  # (endpoint id or "", chat, thread): where a reply goes


def _owes_event(ledger: Ledger, entry: Entry, event: str) -> bool:
    return entry.webhook is not None or event in ledger.subscriptions.get(entry.tenant, ())


def check_hooks(
    ledger: Ledger, hooks: list[Hook], matched: Mapping[str, tuple[Entry, TurnView]]
) -> list[Violation]:
    found: list[Violation] = []
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)  # (turn, event) -> webhook ids
    for hook in hooks:
        wrong = _judge_hook(hook, matched)
        if wrong is not None:
            found.append(wrong)
        if hook.turn_id in matched and (wrong is None or wrong.kind != "foreign"):
            ids[(hook.turn_id, hook.event)].add(hook.webhook_id)
    for (turn_id, event), seen in ids.items():
        if len(seen) > 1:
            entry, _ = matched[turn_id]
            name = session_name((entry.tenant, entry.session))
            detail = f"{name}: {turn_id}'s {event} under webhook ids {sorted(seen)}"
            found.append(Violation("webhook_duplicated", detail))
    for entry, view in matched.values():
        event = f"turn.{view.status}"
        owed = view.kind == "message" and view.status in TERMINAL_STATUSES
        if owed and _owes_event(ledger, entry, event) and (view.id, event) not in ids:
            name = session_name((entry.tenant, entry.session))
            found.append(Violation("webhook_missing", f"{name}: {view.id}'s {event} never came"))
    return found


def _judge_hook(hook: Hook, matched: Mapping[str, tuple[Entry, TurnView]]) -> Violation | None:
    """What is wrong with one delivery: for no known turn, for another session (foreign),
    or not what the turn's record says (event, status, output)."""
    if hook.turn_id not in matched:
        detail = f"{hook.webhook_id}: {hook.event} for {hook.turn_id}, a turn the ledger lacks"
        return Violation("webhook_uncommitted", detail)
    entry, view = matched[hook.turn_id]
    name = session_name((entry.tenant, entry.session))
    data = hook.data
    if hook.tenant not in (None, entry.tenant) or data.get("session_id") != entry.session:
        to = f"{hook.tenant or '?'}/{data.get('session_id')}"
        return Violation("foreign", f"{name}: {view.id}'s {hook.event} reached {to}")
    said = (hook.event, data.get("status"), (data.get("output") or {}).get("content"))
    if view.status in TERMINAL_STATUSES and said == (
        f"turn.{view.status}",
        view.status,
        view.output,
    ):
        return None
    detail = f"{name}: {view.id}'s {hook.event} says {said[1]}, stored {view.status}"
    return Violation("webhook_uncommitted", detail)


def _reply_text(ledger: Ledger, route: ChannelRoute, view: TurnView) -> str | None:
    """What a channel turn owes its chat (None: nothing); see ``lane.replies_for``."""
    if view.answered_by is not None:
        return None
    if view.status == "completed":
        return view.output
    if view.status == "failed":
        bot = ledger.bots.get(route.endpoint_id) or Bot(route.endpoint_id)
        return bot.failure_reply
    return None


def _parts(ledger: Ledger, endpoint_id: str, text: str) -> list[str]:
    bot = ledger.bots.get(endpoint_id)
    if bot is None or bot.channel is None:
        return [text.strip()] if text.strip() else []
    return split(text, PLATFORMS[bot.channel].max_chars)


def _where_of_route(ledger: Ledger, route: ChannelRoute) -> Where:
    bot = ledger.bots.get(route.endpoint_id)
    known = bot is not None and bot.sender is not None
    return (route.endpoint_id if known else "", route.chat, route.thread)


def _where_of_send(ledger: Ledger, send: Send) -> Where:
    bots = [b.endpoint_id for b in ledger.bots.values() if b.sender is not None]
    endpoint = next((e for e in bots if ledger.bots[e].sender == send.sender), "")
    return (endpoint, send.chat, send.thread)


def _chat(where: Where) -> str:
    endpoint, chat, thread = where
    return f"chat {chat}" + (f" thread {thread}" if thread else "") + f" of {endpoint or '?'}"


def check_replies(
    ledger: Ledger,
    sends: list[Send],
    matched: Mapping[str, tuple[Entry, TurnView]],
    owners: Mapping[str, SessionKey],
) -> list[Violation]:
    owed: dict[tuple[Where, str], list[str]] = defaultdict(list)  # -> the turns owing it
    chats: dict[Where, set[SessionKey]] = defaultdict(set)
    for entry, view in matched.values():
        if entry.channel is None:
            continue
        where = _where_of_route(ledger, entry.channel)
        chats[where].add((entry.tenant, entry.session))
        text = _reply_text(ledger, entry.channel, view)
        for part in _parts(ledger, entry.channel.endpoint_id, text or ""):
            owed[(where, part)].append(view.id)
    resent = {s.reply_id for s in sends if s.reply_id}
    once = [s for s in sends if not s.reply_id] + [
        next(s for s in sends if s.reply_id == reply_id) for reply_id in sorted(resent)
    ]  # a reply sent again (its sender died before noting it was sent) is still one reply
    got = Counter((_where_of_send(ledger, s), s.text) for s in once)
    found: list[Violation] = []
    for (where, text), turns in owed.items():
        n, want = got[(where, text)], len(turns)
        if n != want:
            kind: Kind = "reply_missing" if n < want else "reply_duplicated"
            detail = f"{_chat(where)}: {text[:40]!r} of {turns} sent {n} times, owed {want}"
            found.append(Violation(kind, detail))
    for (where, text), n in got.items():
        if (where, text) not in owed:
            detail = f"{_chat(where)}: {text[:40]!r} ({n}x) answers no committed turn"
            found.append(Violation("reply_uncommitted", detail))
        if len(chats[where]) == 1:
            (key,) = chats[where]
            strangers = strangers_in(text, key, owners)
            if strangers:
                detail = f"{_chat(where)} ({session_name(key)}) got messages of {sorted(strangers)}"
                found.append(Violation("foreign", detail))
    return found
