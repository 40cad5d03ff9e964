"""The turn checker catches each kind of violation on purpose-built bad runs, and passes
a good run of every strategy."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.support.turn_checker import NEVER, SessionRun, TurnView, check_turns


def _turn(n: int, **kw: object) -> TurnView:
    """Turn n: accepted at stream position (n * 10), finished at (n * 10 + 5) unless told."""
    values: dict[str, object] = {
        "id": f"t{n}",
        "seq": n,
        "kind": "message",
        "strategy": "enqueue",
        "status": "completed",
        "content": f"m{n}",
        "output": f"r{n}",
        "queued_at": (n * 10, 0),
        "final_at": (n * 10 + 5, 0),
        "finals": 1,
    }
    values.update(kw)
    return TurnView(**values)  # type: ignore[arg-type]


def _user(t: TurnView) -> tuple[str, str, str]:
    return ("human", t.content, f"{t.id}:user")


def _reply(t: TurnView, text: str | None = None) -> tuple[str, str, str]:
    return ("ai", text or t.output or "", f"{t.id}:assistant")


def good_runs() -> dict[str, SessionRun]:
    """One session per strategy, each as the system should leave it."""
    e1, e2 = _turn(1), _turn(2)
    enqueue = SessionRun([e1, e2], [_user(e1), _reply(e1), _user(e2), _reply(e2)])

    # interrupt: turn 1 running when turn 2 came (cancelled just before 2's queued event).
    i1 = _turn(1, status="cancelled", output=None, reason="interrupted", cancelled_by="t2",
               final_at=(19, 0))  # fmt: skip
    i2 = _turn(2, strategy="interrupt")
    interrupt = SessionRun([i1, i2], [_user(i1), _user(i2), _reply(i2)])

    r1 = _turn(1, status="cancelled", output=None, reason="rolled_back", cancelled_by="t2",
               final_at=(19, 0))  # fmt: skip
    r2 = _turn(2, strategy="rollback")
    rollback = SessionRun([r1, r2], [_user(r2), _reply(r2)])

    # coalesce: turns 2 and 3 came while 1 was pending; one call answered all three.
    c1 = _turn(1, output="r", final_at=(40, 0))
    c2 = _turn(2, strategy="coalesce", output="r", answered_by="t1", final_at=(40, 1))
    c3 = _turn(3, strategy="coalesce", output="r", answered_by="t1", final_at=(40, 2))
    coalesce = SessionRun(
        [c1, c2, c3], [_user(c1), _user(c2), _user(c3), ("ai", "r", "t1:assistant")]
    )

    j1, j2 = _turn(1), _turn(2, strategy="reject")
    reject = SessionRun([j1, j2], [_user(j1), _reply(j1), _user(j2), _reply(j2)])

    x1 = _turn(1, status="cancelled", output=None, reason="requested")
    x2 = _turn(2)
    cancel = SessionRun([x1, x2], [_user(x2), _reply(x2)])
    return {
        "enqueue": enqueue,
        "interrupt": interrupt,
        "rollback": rollback,
        "coalesce": coalesce,
        "reject": reject,
        "cancel": cancel,
    }


PROMPTS = [
    [{"role": "user", "content": "m1"}],
    [{"role": "user", "content": "m1"}, {"role": "assistant", "content": "r1"},
     {"role": "user", "content": "m2"}],
    [{"role": "user", "content": "m2"}],
    [{"role": "user", "content": "m1"}, {"role": "user", "content": "m2"},
     {"role": "user", "content": "m3"}],
]  # fmt: skip


def test_a_good_run_of_every_strategy_passes() -> None:
    assert check_turns(good_runs(), prompts=PROMPTS, completed_calls=8) == []


def _broken(session: str, run: SessionRun) -> list[str]:
    runs = good_runs()
    runs[session] = run
    return check_turns(runs)


def test_it_catches_a_turn_stuck_running() -> None:
    run = good_runs()["enqueue"]
    run.turns[1] = replace(run.turns[1], status="running", final_at=NEVER, finals=0)
    assert any("stuck running" in p for p in _broken("enqueue", run))


def test_it_catches_a_turn_with_two_final_events() -> None:
    run = good_runs()["enqueue"]
    run.turns[0] = replace(run.turns[0], finals=2)
    assert any("2 final events" in p for p in _broken("enqueue", run))


def test_it_catches_a_message_in_history_twice() -> None:
    run = good_runs()["enqueue"]
    run.history.append(run.history[0])
    assert any("t1:user 2 times" in p for p in _broken("enqueue", run))


def test_it_catches_a_foreign_message() -> None:
    run = good_runs()["enqueue"]
    run.history.insert(2, ("human", "not yours", "tOTHER:user"))
    assert any("foreign" in p for p in _broken("enqueue", run))


def test_it_catches_a_lost_message_and_a_lost_reply() -> None:
    run = good_runs()["enqueue"]
    run.history = run.history[:3]  # turn 2's reply is gone
    assert any("reply missing" in p for p in _broken("enqueue", run))
    run = good_runs()["interrupt"]
    run.history = run.history[1:]  # the interrupted turn's kept message is gone
    assert any("message missing" in p for p in _broken("interrupt", run))


def test_it_catches_messages_out_of_order() -> None:
    run = good_runs()["enqueue"]
    run.history = [run.history[2], run.history[3], run.history[0], run.history[1]]
    assert any("acceptance order" in p for p in _broken("enqueue", run))


def test_it_catches_a_rolled_back_message_left_in_history() -> None:
    run = good_runs()["rollback"]
    run.history.insert(0, _user(run.turns[0]))
    assert any("message in history" in p for p in _broken("rollback", run))


def test_it_catches_a_cancelled_turns_reply_committed() -> None:
    run = good_runs()["cancel"]
    run.history = [_user(run.turns[0]), _reply(run.turns[0], "late"), *run.history]
    found = _broken("cancel", run)
    assert any("turn 1 (cancelled" in p for p in found)


def test_it_catches_a_reject_accepted_while_a_turn_was_pending() -> None:
    run = good_runs()["reject"]
    run.turns[0] = replace(run.turns[0], final_at=(25, 0))  # finished after turn 2 came
    assert any("(reject) was accepted while" in p for p in _broken("reject", run))


def test_it_catches_a_turn_that_outlived_an_interrupt() -> None:
    run = good_runs()["interrupt"]
    t1 = replace(run.turns[0], status="completed", reason=None, cancelled_by=None,
                 output="r1", final_at=(25, 0))  # fmt: skip
    run.turns[0] = t1
    run.history = [_user(t1), _reply(t1), *run.history[1:]]
    assert any("outlived turn 2 (interrupt)" in p for p in _broken("interrupt", run))


def test_it_catches_a_coalesced_message_answered_on_its_own() -> None:
    run = good_runs()["coalesce"]
    c3 = replace(run.turns[2], answered_by=None, output="r3", final_at=(45, 0))
    run.turns[2] = c3
    run.history = [*run.history, _reply(c3)]
    found = _broken("coalesce", run)
    assert any("(coalesce) came while turn 2 was pending, unmerged" in p for p in found)


def test_it_catches_a_merged_message_answered_twice() -> None:
    runs = good_runs()
    # Right history, but one more call completed than groups were answered.
    assert any("model calls completed" in p for p in check_turns(runs, completed_calls=9))
    run = runs["coalesce"]
    run.turns[1] = replace(run.turns[1], finals=2)
    assert any("2 final events" in p for p in check_turns(runs))


def test_it_catches_a_group_whose_call_did_not_see_every_message() -> None:
    prompts = [p for p in PROMPTS if len(p) != 3 or p[1]["role"] == "assistant"]
    assert any(
        "no model call saw the group" in p for p in check_turns(good_runs(), prompts=prompts)
    )


def test_it_catches_a_group_split_in_history() -> None:
    run = good_runs()["coalesce"]
    run.history = [run.history[0], run.history[3], run.history[1], run.history[2]]
    assert any("not together" in p or "reply" in p for p in _broken("coalesce", run))


@pytest.mark.parametrize("by", ["t9", "t1"])
def test_it_catches_a_cancellation_by_a_turn_that_could_not_cancel(by: str) -> None:
    run = good_runs()["interrupt"]
    run.turns[0] = replace(run.turns[0], cancelled_by=by)
    assert any("which could not cancel it" in p for p in _broken("interrupt", run))
