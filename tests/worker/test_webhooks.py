"""Webhooks from committed turns to loopback receivers, verified with an independent
implementation of Standard Webhooks (the ``standardwebhooks`` package)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from standardwebhooks import Webhook

from shared.settings import Settings
from shared.signing import new_secret
from shared.store.outbox import Endpoint, Outbox, Secret
from shared.store.records import now_ms
from tests.support.polling import eventually
from tests.support.receiver import Receiver
from tests.worker.conftest import RuntimeFactory
from worker.turn import Runtime, drain_session
from worker.webhooks import WebhookSender


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    yield started
    await started.stop()


@pytest.fixture
def hook_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        webhook_allow_private=True,  # the receiver is on loopback
        webhook_backoff_s=0.05,
        webhook_max_attempts=3,
        webhook_timeout_s=1.0,
    )


class Rig:
    """A runtime, its outbox and a sender running in the background."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.outbox = rt.outbox
        self.sender = WebhookSender(rt.outbox, rt.settings)
        self.task = asyncio.create_task(self.sender.run())

    async def turn(self, session: str, *, webhook: str | None = None) -> str:
        keys = self.rt.store.keys("default", session)
        accepted = await self.rt.store.accept(keys, input_doc={"content": "hi"}, webhook=webhook)
        await drain_session(self.rt, "default", session)
        self.sender.wake()
        return accepted.turn_id

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def rig(make_runtime: RuntimeFactory, hook_settings: Settings) -> AsyncIterator[Rig]:
    built = Rig(make_runtime(hook_settings))
    yield built
    await built.stop()


async def _secrets(outbox: Outbox) -> list[str]:
    return [s.value for s in await outbox.signing_secrets("default", create=True)]


def _verify(secret: str, received: Any) -> dict[str, Any]:
    verified: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return verified


async def test_a_finished_turn_is_posted_to_its_webhook_signed_per_the_spec(
    rig: Rig, receiver: Receiver
) -> None:
    turn_id = await rig.turn("hooked", webhook=receiver.url)
    await eventually(lambda: len(receiver.received) == 1)
    [secret] = await _secrets(rig.outbox)
    payload = _verify(secret, receiver.received[0])  # raises on a bad signature
    assert payload["type"] == "turn.completed"
    assert payload["data"]["id"] == turn_id and payload["data"]["status"] == "completed"
    assert payload["data"]["output"]["content"] == "echo: hi (saw 0 earlier messages)"
    assert receiver.received[0].headers["webhook-id"] == f"msg_{turn_id}"
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1  # once


async def test_registered_endpoints_get_the_events_they_take_with_their_own_secrets(
    rig: Rig, receiver: Receiver
) -> None:
    mine = new_secret()
    await rig.outbox.save_endpoint(
        "default",
        Endpoint(id="ep_0000000000000001", url=receiver.url, created_at=now_ms(),
                 events=["turn.completed"], secrets=[Secret(value=mine)]),
    )  # fmt: skip
    turn_id = await rig.turn("registered")
    await eventually(lambda: len(receiver.received) == 1)
    assert _verify(mine, receiver.received[0])["data"]["id"] == turn_id


async def test_a_rotated_secret_and_the_old_one_both_verify(rig: Rig, receiver: Receiver) -> None:
    [old] = await _secrets(rig.outbox)
    await rig.outbox.rotate_signing_secret("default", grace_ms=60_000)
    new = (await _secrets(rig.outbox))[0]
    await rig.turn("rotated", webhook=receiver.url)
    await eventually(lambda: len(receiver.received) == 1)
    assert len(receiver.received[0].headers["webhook-signature"].split(" ")) == 2
    _verify(old, receiver.received[0])
    _verify(new, receiver.received[0])


async def test_a_receiver_down_then_up_gets_the_same_message_id_until_it_answers(
    rig: Rig, receiver: Receiver, make_settings: Callable[..., Settings]
) -> None:
    port = receiver.port
    await receiver.stop()  # down
    turn_id = await rig.turn("flaky", webhook=f"http://127.0.0.1:{port}/hook")
    await asyncio.sleep(0.15)  # an attempt or two fail to connect
    await receiver.start(port)  # up again
    await eventually(lambda: len(receiver.received) == 1, timeout_s=10)
    assert receiver.received[0].headers["webhook-id"] == f"msg_{turn_id}"


async def test_429_is_retried_no_sooner_than_its_retry_after(rig: Rig, receiver: Receiver) -> None:
    receiver.script = [("status", 429, {"Retry-After": "1"})]
    await rig.turn("limited", webhook=receiver.url)
    await eventually(lambda: len(receiver.received) == 2, timeout_s=10)
    first, second = receiver.received
    assert second.at - first.at >= 0.95
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-timestamp"] <= second.headers["webhook-timestamp"]


async def test_410_disables_the_endpoint_and_buries_the_delivery(
    rig: Rig, receiver: Receiver
) -> None:
    await rig.outbox.save_endpoint(
        "default",
        Endpoint(id="ep_0000000000000410", url=receiver.url, created_at=now_ms(),
                 secrets=[Secret(value=new_secret())]),
    )  # fmt: skip
    receiver.script = [("status", 410)]
    await rig.turn("gone")
    await eventually(lambda: len(receiver.received) == 1)
    for _ in range(50):
        endpoint = await rig.outbox.endpoint("default", "ep_0000000000000410")
        if endpoint is not None and endpoint.disabled:
            break
        await asyncio.sleep(0.05)
    assert endpoint is not None and endpoint.disabled
    dead, _ = await rig.outbox.dead_letters("default", limit=10)
    assert [d.endpoint_id for d in dead] == ["ep_0000000000000410"]
    await rig.turn("gone-again")
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 1  # a disabled endpoint gets nothing more


async def test_a_redirect_is_a_failure_and_never_followed(rig: Rig, receiver: Receiver) -> None:
    receiver.script = [("redirect",)] * 3
    await rig.turn("moved", webhook=receiver.url)
    await eventually(lambda: len(receiver.received) == 3, timeout_s=10)
    await asyncio.sleep(0.3)
    assert all("redirected" not in r.headers for r in receiver.received)
    dead, _ = await rig.outbox.dead_letters("default", limit=10)
    assert len(dead) == 1 and dead[0].last_error == "answered 302"


async def test_a_receiver_that_does_not_answer_in_time_is_tried_again(
    rig: Rig, receiver: Receiver
) -> None:
    receiver.script = [("sleep", 3)]  # beyond the 1 s timeout
    await rig.turn("slow", webhook=receiver.url)
    await eventually(lambda: len(receiver.received) == 2, timeout_s=10)
    dead, _ = await rig.outbox.dead_letters("default", limit=10)
    assert dead == []


async def test_a_delivery_that_gives_up_is_a_dead_letter_and_can_be_replayed(
    rig: Rig, receiver: Receiver
) -> None:
    receiver.script = [("status", 500)] * 3
    turn_id = await rig.turn("doomed", webhook=receiver.url)
    await eventually(lambda: len(receiver.received) == 3, timeout_s=10)
    for _ in range(50):
        dead, _ = await rig.outbox.dead_letters("default", limit=10)
        if dead:
            break
        await asyncio.sleep(0.05)
    assert len(dead) == 1 and dead[0].attempts == 3 and dead[0].last_error == "answered 500"
    assert await rig.outbox.replay("default", dead[0].id) is not None
    rig.sender.wake()
    await eventually(lambda: len(receiver.received) == 4, timeout_s=10)
    assert {r.headers["webhook-id"] for r in receiver.received} == {f"msg_{turn_id}"}
    assert (await rig.outbox.dead_letters("default", limit=10))[0] == []


async def test_a_fenced_out_commit_sends_nothing(
    rig: Rig, receiver: Receiver, client: redis.Redis
) -> None:
    keys = rig.rt.store.keys("default", "fenced")
    await rig.rt.store.accept(keys, input_doc={"content": "hi"}, webhook=receiver.url)
    head = await rig.rt.store.begin(keys, "stale-worker")
    assert head is not None
    client.set(keys.lock, "the-new-holder")  # the stale worker lost its lease
    from shared.errors import CommitRejected
    from shared.store import Outcome

    with pytest.raises(CommitRejected):
        await rig.rt.store.commit(
            keys,
            "stale-worker",
            head,
            Outcome(status="completed", output={"content": "x"}),
            webhook="turn.completed",
        )
    assert client.llen(keys.outbox) == 0
    rig.sender.wake()
    await asyncio.sleep(0.5)
    assert receiver.received == []


async def test_a_private_target_is_refused_without_a_connection(
    make_runtime: RuntimeFactory, make_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    rig = Rig(make_runtime(make_settings(webhook_backoff_s=0.05)))  # private not allowed
    try:
        await rig.turn("ssrf", webhook=receiver.url)
        for _ in range(50):
            dead, _ = await rig.outbox.dead_letters("default", limit=10)
            if dead:
                break
            await asyncio.sleep(0.05)
    finally:
        await rig.stop()
    assert receiver.received == []
    assert len(dead) == 1 and (dead[0].last_error or "").startswith("refused:")


async def test_a_sender_stops_when_cancelled_even_if_a_call_below_it_swallows_the_cancel(
    rig: Rig,
) -> None:
    sending = asyncio.Event()

    async def swallowing_once() -> int:
        sending.set()
        with contextlib.suppress(asyncio.CancelledError):  # what a careless library does
            await asyncio.sleep(0.05)
        return 0

    rig.sender.once = swallowing_once  # type: ignore[method-assign]
    rig.sender.wake()
    await asyncio.wait_for(sending.wait(), 5)
    rig.task.cancel()
    done, _ = await asyncio.wait((rig.task,), timeout=2.0)
    assert done, "the sender went on after it was cancelled"


async def test_cancelled_and_coalesced_turns_each_tell_their_own_webhook_once(
    rig: Rig, receiver: Receiver
) -> None:
    store = rig.rt.store
    keys = store.keys("default", "double")
    queued = await store.accept(keys, input_doc={"content": "never mind"}, webhook=receiver.url)
    await store.cancel(keys, queued.turn_id)  # announced: the turn has a webhook URL
    await rig.outbox.note(keys)
    first = await store.accept(keys, input_doc={"content": "a"}, strategy="coalesce")
    second = await store.accept(
        keys, input_doc={"content": "b"}, strategy="coalesce", webhook=receiver.url
    )
    await drain_session(rig.rt, "default", "double")
    rig.sender.wake()
    await eventually(lambda: len(receiver.received) == 2)
    [secret] = await _secrets(rig.outbox)
    told = {
        (p["type"], p["data"]["id"]): p["data"]
        for p in (_verify(secret, r) for r in receiver.received)
    }
    assert set(told) == {("turn.cancelled", queued.turn_id), ("turn.completed", second.turn_id)}
    assert told["turn.cancelled", queued.turn_id]["cancellation"]["reason"] == "requested"
    assert told["turn.completed", second.turn_id]["answered_by"] == first.turn_id
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 2  # once each; the first turn has no URL of its own
