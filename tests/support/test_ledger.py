"""The ledger checker passes a clean run and catches each kind of violation on a copy of it
with exactly that one defect; the reading side is covered through a real Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import redis

from shared.channels.endpoints import DEFAULT_FAILURE_REPLY
from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store.history import assistant_doc, user_doc
from shared.store.records import ChannelRoute
from tests.support.checker import message_for
from tests.support.ledger import (
    End,
    Hook,
    Kind,
    Ledger,
    Prompt,
    Send,
    SessionKey,
    observe_end,
)
from tests.support.ledger_check import check, counts, report
from tests.support.platforms import Sent
from tests.support.receiver import Received
from tests.support.turn_checker import NEVER, SessionRun, TurnView

API: SessionKey = ("acme", "s1")  # turns through the HTTP API; acme has a webhook endpoint
CHAT: SessionKey = ("globex", "chat-100")  # turns from a Telegram chat, coalesced
BOT = "bot-1"  # how the platforms' fake names globex's bot
OWN_HOOK = "http://hooks.test/g3"


def _route(n: int) -> ChannelRoute:
    return ChannelRoute(endpoint_id="ep1", chat="100", message=f"m{n}")


def _view(turn_id: str, seq: int, content: str, **kw: Any) -> TurnView:
    """A completed turn echoing its message, accepted at (seq * 10) and done at (seq * 10 + 5)."""
    values: dict[str, Any] = {
        "id": turn_id,
        "seq": seq,
        "kind": "message",
        "strategy": "enqueue",
        "status": "completed",
        "content": content,
        "output": f"echo {content}",
        "queued_at": (seq * 10, 0),
        "final_at": (seq * 10 + 5, 0),
        "finals": 1,
    }
    values.update(kw)
    return TurnView(**values)


def _hook(view: TurnView, session: str, webhook_id: str | None = None, **data: Any) -> Hook:
    """The delivery of a finished turn's event, as the outbox builds its body."""
    record = {
        "id": view.id,
        "session_id": session,
        "status": view.status,
        "output": {"content": view.output} if view.output is not None else None,
        **data,
    }
    body = {"type": f"turn.{record['status']}", "timestamp": None, "data": record}
    return Hook(webhook_id or f"msg_{view.id}", body)


@dataclass
class World:
    ledger: Ledger
    end: End
    content: dict[str, str]  # turn id -> its message

    def run(self, key: SessionKey) -> SessionRun:
        return self.end.runs[key]

    def turn(self, key: SessionKey, turn_id: str) -> TurnView:
        return next(t for t in self.run(key).turns if t.id == turn_id)

    def change(self, key: SessionKey, turn_id: str, **kw: Any) -> TurnView:
        run = self.run(key)
        run.turns = [replace(t, **kw) if t.id == turn_id else t for t in run.turns]
        return self.turn(key, turn_id)

    def forget(self, key: SessionKey, turn_id: str) -> None:
        """Remove every trace of a turn: record, history, deliveries."""
        run = self.run(key)
        run.turns = [t for t in run.turns if t.id != turn_id]
        run.history = [h for h in run.history if not h[2].startswith(f"{turn_id}:")]
        self.end.hooks = [h for h in self.end.hooks if h.body["data"]["id"] != turn_id]


def world() -> World:
    """A clean run. acme/s1: a1, a2 completed, a3 cancelled by its client, every event
    delivered (a1's twice under one webhook id). globex/chat-100: g1 and g2 answered by one
    call (g2 merged into g1), g3 failed (its own webhook told, the failure reply sent)."""
    c = {f"a{n}": message_for("s1", n) for n in (1, 2, 3)}
    c |= {f"g{n}": message_for("chat-100", n) for n in (1, 2, 3)}
    ledger = Ledger()
    ledger.subscribed("acme")
    ledger.bot("ep1", sender=BOT)
    for n in (1, 2, 3):
        ledger.accepted(*API, f"a{n}", n, c[f"a{n}"])
    ledger.cancelled(*API, "a3")
    ledger.accepted(*CHAT, None, None, c["g1"], channel=_route(1))
    ledger.accepted(*CHAT, None, None, c["g2"], channel=_route(2))
    ledger.accepted(*CHAT, None, None, c["g3"], webhook=OWN_HOOK, channel=_route(3))

    a1, a2 = _view("a1", 1, c["a1"]), _view("a2", 2, c["a2"])
    a3 = _view("a3", 3, c["a3"], status="cancelled", output=None, reason="requested")
    api = SessionRun(
        [a1, a2, a3],
        [
            ("human", c["a1"], "a1:user"),
            ("ai", a1.output or "", "a1:assistant"),
            ("human", c["a2"], "a2:user"),
            ("ai", a2.output or "", "a2:assistant"),
        ],
    )
    reply = f"echo {c['g2']}"
    g1 = _view("g1", 1, c["g1"], strategy="coalesce", output=reply, final_at=(40, 0))
    g2 = _view("g2", 2, c["g2"], strategy="coalesce", output=reply, answered_by="g1",
               final_at=(40, 1))  # fmt: skip
    g3 = _view("g3", 3, c["g3"], strategy="coalesce", status="failed", output=None,
               queued_at=(50, 0), final_at=(55, 0))  # fmt: skip
    chat = SessionRun(
        [g1, g2, g3],
        [
            ("human", c["g1"], "g1:user"),
            ("human", c["g2"], "g2:user"),
            ("ai", reply, "g1:assistant"),
        ],
    )
    hooks = [_hook(a1, "s1"), _hook(a1, "s1"), _hook(a2, "s1"), _hook(a3, "s1"),
             _hook(g3, "chat-100")]  # fmt: skip
    sends = [Send("100", reply, sender=BOT), Send("100", DEFAULT_FAILURE_REPLY, sender=BOT)]
    prompts: list[Prompt] = [
        [{"role": "user", "content": c["a1"]}],
        [{"role": "user", "content": c["a1"]}, {"role": "assistant", "content": a1.output},
         {"role": "user", "content": c["a2"]}],
        [{"role": "user", "content": c["g1"]}, {"role": "user", "content": c["g2"]}],
        [{"role": "user", "content": c["g1"]}, {"role": "user", "content": c["g2"]},
         {"role": "assistant", "content": reply}, {"role": "user", "content": c["g3"]}],
    ]  # fmt: skip
    return World(ledger, End({API: api, CHAT: chat}, hooks, sends, prompts), c)


def test_a_clean_run_passes() -> None:
    w = world()
    found = check(w.ledger, w.end)
    assert found == [], report(found)
    assert report(found) == "no violations"


# -- one defect each ---------------------------------------------------------------------


def _record_lost(w: World) -> None:
    w.forget(API, "a2")


def _message_lost(w: World) -> None:
    w.run(CHAT).history = [h for h in w.run(CHAT).history if h[2] != "g2:user"]


def _reply_lost_from_history(w: World) -> None:
    w.run(API).history = [h for h in w.run(API).history if h[2] != "a2:assistant"]


def _cancelled_unasked(w: World) -> None:
    w.ledger.cancels.clear()


def _document_twice(w: World) -> None:
    w.run(API).history.insert(1, w.run(API).history[0])


def _message_turned_twice(w: World) -> None:
    twin = _view("a2x", 4, w.content["a2"])
    w.run(API).turns.append(twin)
    w.run(API).history += [("human", twin.content, "a2x:user"), ("ai", "echo", "a2x:assistant")]


def _history_reordered(w: World) -> None:
    h = w.run(API).history
    w.run(API).history = [h[2], h[3], h[0], h[1]]


def _channel_messages_stored_out_of_order(w: World) -> None:
    # The ledger sent g2 before g1; the store has g1 first.
    e = w.ledger.entries
    e[3], e[4] = e[4], e[3]


def _reply_of_another_session(w: World) -> None:
    h = w.run(API).history
    h[1] = ("ai", f"echo {w.content['g1']}", "a1:assistant")


def _record_never_accepted(w: World) -> None:
    w.run(API).turns.append(_view("zz", 4, message_for("s1", 9), status="failed", output=None))


def _prompt_of_two_sessions(w: World) -> None:
    assert w.end.prompts is not None
    w.end.prompts.append(
        [{"role": "user", "content": w.content["a1"]}, {"role": "user", "content": w.content["g1"]}]
    )


def _turn_stuck(w: World) -> None:
    w.forget(API, "a2")
    w.run(API).turns.insert(1, _view("a2", 2, w.content["a2"], status="running", output=None,
                                     final_at=NEVER, finals=0))  # fmt: skip


def _seq_told_otherwise(w: World) -> None:
    w.ledger.entries[1] = replace(w.ledger.entries[1], seq=7)


def _cancel_ignored(w: World) -> None:
    w.ledger.cancelled(*API, "a2")


def _webhook_lost(w: World) -> None:
    w.end.hooks = [h for h in w.end.hooks if h.body["data"]["id"] != "a2"]


def _own_webhook_lost(w: World) -> None:
    w.end.hooks = [h for h in w.end.hooks if h.body["data"]["id"] != "g3"]


def _webhook_under_two_ids(w: World) -> None:
    w.end.hooks.append(_hook(w.turn(API, "a2"), "s1", webhook_id="msg_again"))


def _webhook_disagrees(w: World) -> None:
    w.end.hooks.append(_hook(w.turn(API, "a3"), "s1", status="completed"))


def _webhook_of_an_unknown_turn(w: World) -> None:
    w.end.hooks.append(_hook(_view("ghost", 9, "x"), "s1"))


def _webhook_to_another_session(w: World) -> None:
    w.end.hooks = [h for h in w.end.hooks if h.body["data"]["id"] != "a2"]
    w.end.hooks.append(_hook(w.turn(API, "a2"), "s2"))


def _reply_never_sent(w: World) -> None:
    w.end.sends = w.end.sends[:1]


def _reply_sent_twice(w: World) -> None:
    w.end.sends.append(w.end.sends[0])


def _reply_to_another_bot(w: World) -> None:
    w.end.sends[0] = replace(w.end.sends[0], sender="bot-2")


def _reply_of_a_failed_turn(w: World) -> None:
    w.end.sends.append(Send("100", f"echo {w.content['g3']}", sender=BOT))


def _two_final_events(w: World) -> None:
    w.change(API, "a1", finals=2)


def _strategy_not_kept(w: World) -> None:
    w.ledger.entries[1] = replace(w.ledger.entries[1], strategy="interrupt")


DEFECTS: list[tuple[Callable[[World], None], set[Kind]]] = [
    (_record_lost, {"lost"}),
    (_message_lost, {"lost"}),
    (_reply_lost_from_history, {"lost"}),
    (_cancelled_unasked, {"lost"}),
    (_document_twice, {"duplicated"}),
    (_message_turned_twice, {"duplicated"}),
    (_history_reordered, {"reordered"}),
    (_channel_messages_stored_out_of_order, {"reordered"}),
    (_reply_of_another_session, {"foreign"}),
    (_record_never_accepted, {"foreign"}),
    (_prompt_of_two_sessions, {"foreign"}),
    (_webhook_to_another_session, {"foreign", "webhook_missing"}),
    (_turn_stuck, {"stuck"}),
    (_seq_told_otherwise, {"seq_mismatch"}),
    (_cancel_ignored, {"cancel_ignored"}),
    (_webhook_lost, {"webhook_missing"}),
    (_own_webhook_lost, {"webhook_missing"}),
    (_webhook_under_two_ids, {"webhook_duplicated"}),
    (_webhook_disagrees, {"webhook_uncommitted"}),
    (_webhook_of_an_unknown_turn, {"webhook_uncommitted"}),
    (_reply_never_sent, {"reply_missing"}),
    (_reply_sent_twice, {"reply_duplicated"}),
    (_reply_to_another_bot, {"reply_missing", "reply_uncommitted"}),
    (_reply_of_a_failed_turn, {"reply_uncommitted"}),
    (_two_final_events, {"strategy"}),
    (_strategy_not_kept, {"strategy"}),
]


@pytest.mark.parametrize(
    ("defect", "kinds"), DEFECTS, ids=[d.__name__.strip("_") for d, _ in DEFECTS]
)
def test_it_catches_exactly_the_defect(defect: Callable[[World], None], kinds: set[Kind]) -> None:
    w = world()
    defect(w)
    found = check(w.ledger, w.end)
    assert set(counts(found)) == kinds, report(found)


def test_a_request_without_an_answer_may_or_may_not_have_become_a_turn() -> None:
    w = world()
    w.ledger.indeterminate(*API, message_for("s1", 7))
    assert check(w.ledger, w.end) == []
    became = message_for("s1", 8)
    w.ledger.indeterminate(*API, became)
    w.run(API).turns.append(a8 := _view("a8", 4, became, status="failed", output=None))
    w.end.hooks.append(_hook(a8, "s1"))
    assert check(w.ledger, w.end) == []
    w.ledger.cancels.clear()
    w.ledger.cancelled(*API, "a3", status=None)  # a cancel whose answer never came
    assert check(w.ledger, w.end) == []


def test_a_replayed_answer_is_one_turn() -> None:
    w = world()
    w.ledger.accepted(*API, "a2", 2, w.content["a2"])  # an Idempotency-Key retry
    assert check(w.ledger, w.end) == []


def test_a_clear_forgives_the_history_before_it() -> None:
    w = world()
    w.ledger.cleared(*API, "c4", 4)
    w.run(API).turns.append(_view("c4", 4, "", kind="clear", output=None))
    w.run(API).history = []
    found = check(w.ledger, w.end)
    assert found == [], report(found)


def test_counts_and_report_summarise() -> None:
    w = world()
    _record_lost(w)
    _reply_sent_twice(w)
    found = check(w.ledger, w.end)
    assert counts(found) == {"lost": 1, "reply_duplicated": 1}
    text = report(found, limit=1)
    assert text.startswith("2 violations") and "acme/s1" in text and "1 more" in text


# -- through Redis -----------------------------------------------------------------------


def _store(client: redis.Redis, keys: SessionKeys, run: SessionRun) -> None:
    """Write a session as the scripts would leave it: records, history, event stream."""
    events: list[tuple[tuple[int, int], str, str, str]] = []
    for t in run.turns:
        record = {
            "id": t.id,
            "session_id": keys.session,
            "seq": t.seq,
            "kind": t.kind,
            "strategy": t.strategy,
            "status": t.status,
            "input": {"content": t.content},
            "output": {"content": t.output} if t.output is not None else None,
            "answered_by": t.answered_by,
            "cancellation": {"reason": t.reason, "by": t.cancelled_by} if t.reason else None,
        }
        client.hset(keys.turns, t.id, json.dumps(record))
        events.append((t.queued_at, t.id, "status", json.dumps({"status": "queued"})))
        if t.finals:
            events.append((t.final_at, t.id, "final", json.dumps(record)))
    for _, turn_id, kind, data in sorted(events):
        client.xadd(keys.events, {"turn": turn_id, "type": kind, "data": data})
    for role, content, doc_id in run.history:
        turn_id = doc_id.rsplit(":", 1)[0]
        doc = user_doc if role == "human" else assistant_doc
        client.rpush(keys.history, json.dumps(doc(content, turn_id=turn_id)))


def test_observe_end_reads_what_redis_and_the_receivers_hold(
    client: redis.Redis, settings: Settings
) -> None:
    w = world()
    for key, run in w.end.runs.items():
        _store(client, SessionKeys(settings.key_prefix, *key), run)
    received = [
        Received({"Webhook-Id": h.webhook_id, "Content-Type": "application/json"},
                 json.dumps(h.body).encode(), 0.0)
        for h in w.end.hooks
    ]  # fmt: skip
    sent = [Sent("telegram", s.chat, s.thread, s.text, s.sender or "", 0.0) for s in w.end.sends]

    end = observe_end(client, settings, w.ledger, received=received, sent=sent)
    assert {k: [t.id for t in r.turns] for k, r in end.runs.items()} == {
        API: ["a1", "a2", "a3"],
        CHAT: ["g1", "g2", "g3"],
    }
    assert end.hooks == w.end.hooks
    assert end.sends == w.end.sends
    found = check(w.ledger, end)
    assert found == [], report(found)

    keys = SessionKeys(settings.key_prefix, *API)
    client.lrem(keys.history, 0, json.dumps(user_doc(w.content["a1"], turn_id="a1")))
    by_tenant = observe_end(client, settings, w.ledger, received={"acme": received[:4]})
    found = check(w.ledger, by_tenant)
    assert counts(found) == {
        "lost": 1,  # a1's message
        "webhook_missing": 1,  # g3's own webhook: its delivery left out
        "reply_missing": 2,  # no sends passed
    }, report(found)


def test_one_reply_sent_again_after_its_sender_died_is_one_reply_two_are_a_duplicate() -> None:
    w = world()
    w.end.sends[0] = replace(w.end.sends[0], reply_id="telegram:1:1")
    w.end.sends.append(w.end.sends[0])  # the same reply, resent: at least once
    assert check(w.ledger, w.end) == []
    w.end.sends.append(replace(w.end.sends[0], reply_id="telegram:2:1"))  # a second reply
    assert set(counts(check(w.ledger, w.end))) == {"reply_duplicated"}
