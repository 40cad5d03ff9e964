"""Deliveries under faults, with real worker and API processes: webhook receivers and
messaging platforms that are down, slow, or answer 500 / 429 / 410 for longer than the
retry schedule. Each send is tried again, then kept as a dead letter, and a replay over
the API delivers it: a turn's event always under the one ``webhook-id``, each committed
turn's reply in its chat exactly once, none for a turn that was never committed. The
workers' ``chatlane_deliveries_total`` counts every send, retry and dead letter.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import redis
from aiohttp import web
from standardwebhooks import Webhook

from shared.keys import GlobalKeys, SessionKeys
from shared.settings import Settings
from shared.store.records import ChannelRoute
from tests.support.checker import message_for
from tests.support.cluster import Cluster
from tests.support.faults import metrics_of, wait_for
from tests.support.ledger import Ledger, observe_end
from tests.support.ledger_check import check, report
from tests.support.loop_thread import LoopThread
from tests.support.platform_requests import (
    TELEGRAM_SECRET_TOKEN,
    telegram_request,
    telegram_text_message,
)
from tests.support.platforms import PlatformsThread
from tests.support.receiver import Receiver, ReceiverThread

ATTEMPTS = 3  # the retry schedule: this many attempts, 0.2 s doubling, 0.5 s at most
RETRIES = {"backoff_s": 0.2, "max_backoff_s": 0.5, "timeout_s": 1.0, "max_attempts": ATTEMPTS}
HOLD_S = 2.5  # a slow peer answers this long after the request: past the 1 s timeout


def _settings(fault_settings: Callable[..., Settings], kind: str) -> Settings:
    return fault_settings(**{f"{kind}_{name}": value for name, value in RETRIES.items()})


def _deliveries(cluster: Cluster, kind: str, result: str) -> float:
    """``chatlane_deliveries_total{kind, result}`` summed over every worker."""
    urls = cluster.worker_metrics.values()
    return metrics_of(urls, "chatlane_deliveries_total", kind=kind, result=result)


def _reserved_port() -> socket.socket:
    """A loopback port bound but not listening: connections to it are refused until a
    server listens there too (both sockets allow the address to be reused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class _ReceiverAt(Receiver):
    """A receiver that starts on a port chosen beforehand (one that was refusing)."""

    at_port: int = 0

    async def start(self, port: int = 0) -> Receiver:
        return await super().start(port or self.at_port)


Mode = tuple[Any, ...]  # how a PlatformFront answers


class PlatformFront:
    """One bot's platform API address, in front of the platforms' fake. Its mode:
    ``("refuse",)`` connections are refused (the port is bound, not listening);
    ``("status", code, headers)`` each send is answered so; ``("hold", s)`` each is held
    ``s`` seconds, then dropped with a 503; ``("late", s)`` held, then passed on;
    ``("pass",)`` passed on to the fake at once. ``answered`` counts its answers by
    (answer, chat). Runs on a loop of its own in a background thread; ``set`` and the
    counts work from the test's thread."""

    def __init__(self, target: str, mode: Mode) -> None:
        self.target = target
        self.mode = mode
        self.answered: Counter[tuple[str, str]] = Counter()
        self._sock = _reserved_port()
        self.port: int = self._sock.getsockname()[1]
        self._thread = LoopThread(self._start, self._stop, "platform-front")
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, answer: str, chat: str | None = None) -> int:
        return sum(
            n for (a, c), n in list(self.answered.items()) if a == answer and chat in (None, c)
        )

    def set(self, mode: Mode) -> None:
        """Answer from now on as ``mode`` says (listening first, if it was refusing)."""
        self.mode = mode
        if mode[0] != "refuse":
            self._thread.call(self._listen())

    def __enter__(self) -> PlatformFront:
        self._thread.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.__exit__(*exc)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._client = aiohttp.ClientSession()
        if self.mode[0] != "refuse":
            await self._listen()

    async def _listen(self) -> None:
        if self._server is None and self._runner is not None and self._runner.server:
            self._server = await asyncio.get_running_loop().create_server(
                self._runner.server, sock=self._sock
            )

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        chat = str(json.loads(body or b"{}").get("chat_id"))
        mode = self.mode
        if mode[0] == "status":
            self.answered[str(mode[1]), chat] += 1
            return web.Response(status=mode[1], headers=mode[2], text="")
        if mode[0] in ("hold", "late"):
            self.answered["held" if mode[0] == "hold" else "late", chat] += 1
            await asyncio.sleep(mode[1])
            if mode[0] == "hold":
                return web.Response(status=503, text="")
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "content-type"}
        url = self.target + request.path_qs
        async with self._client.post(url, data=body, headers=headers) as answer:
            payload = await answer.read()
            self.answered[f"passed {answer.status}", chat] += 1
            return web.Response(
                status=answer.status, body=payload, content_type=answer.content_type
            )


def _summary(dead: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Dead letters in short, for a failure's message."""
    return [(d.get("url") or d.get("chat"), d["attempts"], d["last_error"]) for d in dead]


def _dead(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    page = http.get(path, params={"limit": 100})
    assert page.status_code == 200, page.text
    data: list[dict[str, Any]] = page.json()["data"]
    return data


def _replay_all(http: httpx.Client, path: str, dead: list[dict[str, Any]]) -> None:
    for letter in dead:
        replayed = http.post(f"{path}/{letter['id']}/replay")
        assert replayed.status_code == 202, replayed.text
    again = http.post(f"{path}/{dead[0]['id']}/replay")
    assert again.status_code == 404, again.text  # a replayed letter is no longer dead


# -- webhooks -----------------------------------------------------------------------------


def _turn(
    http: httpx.Client,
    ledger: Ledger,
    tenant: str,
    session: str,
    webhook: str | None = None,
    **asked: Any,
) -> dict[str, Any]:
    """A turn accepted over the API (``asked``: more members of its body)."""
    content = message_for(session, 1)
    body = {"content": content, **asked} | ({"webhook": webhook} if webhook else {})
    answer = http.post(f"/v1/sessions/{session}/turns", json=body)
    assert answer.status_code == 202, answer.text
    turn: dict[str, Any] = answer.json()
    strategy = asked.get("strategy")
    ledger.accepted(tenant, session, turn["id"], turn["seq"], content, strategy, webhook)
    return turn


def test_webhooks_failing_past_their_retries_are_dead_letters_a_replay_sends_once_per_id(
    fault_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    """A turn's own URL refusing connections, answering after the timeout, 500, or 429
    with a Retry-After longer than the backoff; an endpoint answering 410 (switched off,
    then on again over the API). Receivers get every attempt and the replay under the
    turn's one ``webhook-id``, signed with the secret of the day."""
    settings = _settings(fault_settings, "webhook")
    tenant = settings.default_tenant
    path = "/v1/webhooks/dead-letters"
    ledger = Ledger()
    ledger.subscribed(tenant, ["turn.cancelled"])  # the endpoint made below
    scripts: dict[str, list[tuple[Any, ...]]] = {
        "slow": [("sleep", HOLD_S)] * 50,
        "500": [("status", 500)] * 50,
        "429": [("status", 429, {"Retry-After": "1"})] * 50,
        "410": [("status", 410)] * 50,
    }
    with ExitStack() as stack:
        gone = stack.enter_context(_reserved_port())  # a receiver that is down: refused
        hooks = {
            name: stack.enter_context(ReceiverThread(Receiver(script=list(script))))
            for name, script in scripts.items()
        }
        cluster = stack.enter_context(Cluster(settings, tmp_path, workers=2))
        http = stack.enter_context(httpx.Client(base_url=cluster.base_url, timeout=30))
        # An endpoint that answers 410 and takes only cancels: one turn is cancelled.
        made = http.post(
            "/v1/webhooks/endpoints", json={"url": hooks["410"].url, "events": ["turn.cancelled"]}
        )
        assert made.status_code == 201, made.text
        endpoint = made.json()
        urls = {name: hooks[name].url for name in ("slow", "500", "429")}
        urls["down"] = f"http://127.0.0.1:{gone.getsockname()[1]}/hook"
        turns = {
            name: _turn(http, ledger, tenant, f"hook-{name}", url) for name, url in urls.items()
        }
        turns["410"] = _turn(http, ledger, tenant, "hook-410", strategy="coalesce", debounce_s=30)
        cancel = http.post(f"/v1/sessions/hook-410/turns/{turns['410']['id']}/cancel")
        assert cancel.status_code == 200, cancel.text
        ledger.cancelled(tenant, "hook-410", turns["410"]["id"], cancel.json()["status"])

        assert wait_for(lambda: len(_dead(http, path)) == 5, 30), _summary(_dead(http, path))
        dead = _dead(http, path)
        assert {(d["url"], d["endpoint_id"], d["attempts"]) for d in dead} == {
            *((url, None, ATTEMPTS) for url in urls.values()),
            (hooks["410"].url, endpoint["id"], 1),
        }, _summary(dead)
        errors = {d["url"]: d["last_error"] for d in dead}
        assert [errors[hooks[n].url] for n in ("500", "429", "410")] == [
            "answered 500",
            "answered 429",
            "answered 410",
        ]
        assert http.get(f"/v1/webhooks/endpoints/{endpoint['id']}").json()["disabled"] is True
        assert [len(hooks[n].receiver.received) for n in scripts] == [ATTEMPTS] * 3 + [1]
        first, second, third = (r.at for r in hooks["429"].receiver.received)
        assert second - first >= 0.9 and third - second >= 0.9  # its Retry-After, honoured
        assert _deliveries(cluster, "webhook", "retried") == 4 * (ATTEMPTS - 1)
        assert _deliveries(cluster, "webhook", "dead_lettered") == 5
        assert _deliveries(cluster, "webhook", "sent") == 0

        # Every receiver is back, the endpoint switched on again, every dead letter replayed.
        up = stack.enter_context(ReceiverThread(_ReceiverAt(at_port=gone.getsockname()[1])))
        for hook in hooks.values():
            hook.receiver.script = []
        enabled = http.post(f"/v1/webhooks/endpoints/{endpoint['id']}/enable")
        assert enabled.status_code == 200, enabled.text
        _replay_all(http, path, dead)
        assert wait_for(lambda: _deliveries(cluster, "webhook", "sent") == 5, 20)
        assert wait_for(lambda: client.hlen(GlobalKeys(settings.key_prefix).deliveries) == 0)
        assert _dead(http, path) == []
        assert _deliveries(cluster, "webhook", "retried") == 4 * (ATTEMPTS - 1)
        assert _deliveries(cluster, "webhook", "dead_lettered") == 5
        signing = http.get("/v1/webhooks/signing-secret").json()["secrets"][0]["value"]

    received = {name: hook.receiver.received for name, hook in hooks.items()}
    received["down"] = up.receiver.received
    for name, turn in turns.items():
        ids = {r.headers["webhook-id"] for r in received[name]}
        assert ids == {f"msg_{turn['id']}"}, (name, ids)  # every attempt and the replay: one id
        secret = endpoint["secret"] if name == "410" else signing
        Webhook(secret).verify(received[name][-1].body, received[name][-1].headers)
    everything = [r for rs in received.values() for r in rs]
    end = observe_end(client, settings, ledger, received=everything)
    violations = check(ledger, end)
    assert violations == [], report(violations)


# -- channel replies ------------------------------------------------------------------------

FAULTS: dict[str, Mode] = {
    "refused": ("refuse",),
    "500": ("status", 500, {}),
    "slow": ("hold", HOLD_S),
    "410": ("status", 410, {}),
    "429": ("status", 429, {"Retry-After": "1"}),
}
ANSWER = {"500": "500", "slow": "held", "410": "410"}  # how each failing front answers


@dataclass(frozen=True)
class _Bot:
    n: int
    id: str
    webhook_url: str

    def chat(self, c: int) -> str:
        return str(900_000_000 + self.n * 100 + c)

    def session(self, chat: str) -> str:
        return f"telegram:{self.id}:{chat}"


def _bot(
    http: httpx.Client,
    platforms: PlatformsThread,
    ledger: Ledger,
    n: int,
    api_base: str,
    debounce_s: float,
) -> _Bot:
    """A Telegram bot of its own token, whose sends go to ``api_base``."""
    token = f"{800_000 + n}:AAFaultTestsBot{n:02d}TokenForTheFront"
    platforms.fake.telegram_tokens.add(token)
    made = http.post(
        "/v1/channels",
        json={
            "channel": "telegram",
            "credentials": {"bot_token": token, "secret_token": TELEGRAM_SECRET_TOKEN},
            "api_base": api_base,
            "debounce_s": debounce_s,
        },
    )
    assert made.status_code == 201, made.text
    ledger.bot(made.json()["id"], sender=token, channel="telegram")
    return _Bot(n, made.json()["id"], made.json()["webhook_url"])


def _message(http: httpx.Client, ledger: Ledger, tenant: str, bot: _Bot, c: int) -> str:
    """A user's text in chat ``c`` of ``bot``, as Telegram delivers it; returns the chat."""
    chat = bot.chat(c)
    content = message_for(bot.session(chat), 1)
    update = telegram_text_message(chat_id=int(chat), text=content)
    answer = http.post(bot.webhook_url, **telegram_request(update).kwargs())
    assert answer.status_code == 200, answer.text
    route = ChannelRoute(endpoint_id=bot.id, chat=chat, message=str(update["update_id"]))
    ledger.accepted(tenant, bot.session(chat), None, None, content, channel=route)
    return chat


def test_replies_failing_past_their_retries_are_dead_letters_a_replay_sends_each_once(
    fault_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    """Five Telegram bots, two chats each, whose platform refuses connections, answers
    500, holds each send past the timeout, answers 410, or throttles (429 with
    Retry-After) for longer than a 5xx is retried. Every committed turn's reply reaches
    its chat once, after the replay where it was buried; a cancelled turn's never."""
    settings = _settings(fault_settings, "channel")
    tenant = settings.default_tenant
    path = "/v1/channels/dead-letters"
    ledger = Ledger()
    with ExitStack() as stack:
        platforms = stack.enter_context(PlatformsThread())
        fronts = {
            name: stack.enter_context(PlatformFront(platforms.base_url, mode))
            for name, mode in FAULTS.items()
        }
        cluster = stack.enter_context(Cluster(settings, tmp_path, workers=2))
        http = stack.enter_context(httpx.Client(base_url=cluster.base_url, timeout=30))
        bots = {
            name: _bot(http, platforms, ledger, n, front.url, debounce_s=0)
            for n, (name, front) in enumerate(fronts.items(), 1)
        }
        chats = {
            name: [_message(http, ledger, tenant, bot, c) for c in (1, 2)]
            for name, bot in bots.items()
        }
        # A turn cancelled before it ran is owed no reply, replayed or not.
        patient = _bot(http, platforms, ledger, 9, fronts["500"].url, debounce_s=30)
        unanswered = patient.session(_message(http, ledger, tenant, patient, 1))
        [queued] = http.get(f"/v1/sessions/{unanswered}/turns").json()["data"]
        cancel = http.post(f"/v1/sessions/{unanswered}/turns/{queued['id']}/cancel")
        assert cancel.status_code == 200, cancel.text
        ledger.cancelled(tenant, unanswered, queued["id"], cancel.json()["status"])

        # Each reply of a failing bot is tried ATTEMPTS times (once for a 410: no retry can
        # change it), then is a dead letter; a throttled bot's replies wait as long as they
        # are throttled, and are never buried.
        assert wait_for(lambda: len(_dead(http, path)) == 8, 30), _summary(_dead(http, path))
        throttled = fronts["429"]
        assert wait_for(lambda: all(throttled.count("429", c) > ATTEMPTS for c in chats["429"]), 20)
        assert platforms.fake.sent == []
        throttled.set(("pass",))
        dead = _dead(http, path)
        assert Counter((d["endpoint_id"], d["attempts"]) for d in dead) == {
            (bots["refused"].id, ATTEMPTS): 2,
            (bots["500"].id, ATTEMPTS): 2,
            (bots["slow"].id, ATTEMPTS): 2,
            (bots["410"].id, 0): 2,
        }, _summary(dead)
        for name, answer in ANSWER.items():
            want = 1 if name == "410" else ATTEMPTS
            assert [fronts[name].count(answer, c) for c in chats[name]] == [want] * 2, name

        # Every platform is back, and every dead letter is replayed.
        for name in ("refused", *ANSWER):
            fronts[name].set(("pass",))
        _replay_all(http, path, dead)
        owed = {c for cs in chats.values() for c in cs}
        assert wait_for(lambda: {s.chat for s in platforms.fake.sent} >= owed, 20)
        lanes = [
            SessionKeys(settings.key_prefix, tenant, bots[name].session(c)).replies
            for name, cs in chats.items()
            for c in cs
        ]
        assert wait_for(lambda: all(client.llen(lane) == 0 for lane in lanes), 10)
        assert _dead(http, path) == []
        assert _deliveries(cluster, "reply", "sent") == 10
        assert _deliveries(cluster, "reply", "dead_lettered") == 8
        retried = 3 * 2 * (ATTEMPTS - 1) + throttled.count("429")
        assert _deliveries(cluster, "reply", "retried") == retried
        sent = platforms.fake.sent

    assert [s for s in sent if s.chat == patient.chat(1)] == []
    end = observe_end(client, settings, ledger, sent=sent)
    violations = check(ledger, end)
    assert violations == [], report(violations)


# -- one slow peer, one place -----------------------------------------------------------

HANG_S = 6.0  # how long the slow receiver and the slow platform take to answer (within
# the timeouts below: they are slow, not dead)


def test_a_slow_receiver_or_platform_holds_up_its_own_send_and_no_other(
    fault_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    """One worker, so one webhook sender and one reply sender: while a receiver and a
    platform take their time over one send each, another receiver's webhook and another
    bot's reply are sent, and then the slow ones too, each once."""
    settings = fault_settings(webhook_timeout_s=20.0, channel_timeout_s=20.0)
    tenant = settings.default_tenant
    ledger = Ledger()
    with ExitStack() as stack:
        platforms = stack.enter_context(PlatformsThread())
        late = stack.enter_context(PlatformFront(platforms.base_url, ("late", HANG_S)))
        prompt = stack.enter_context(PlatformFront(platforms.base_url, ("pass",)))
        slow_hook = stack.enter_context(ReceiverThread(Receiver(script=[("sleep", HANG_S)])))
        hook = stack.enter_context(ReceiverThread())
        cluster = stack.enter_context(Cluster(settings, tmp_path, workers=1))
        http = stack.enter_context(httpx.Client(base_url=cluster.base_url, timeout=30))
        slow_bot = _bot(http, platforms, ledger, 1, late.url, debounce_s=0)
        bot = _bot(http, platforms, ledger, 2, prompt.url, debounce_s=0)
        _message(http, ledger, tenant, slow_bot, 1)
        _turn(http, ledger, tenant, "hook-slow", slow_hook.url)
        assert wait_for(lambda: late.count("late") == 1 and len(slow_hook.receiver.received) == 1)

        chat = _message(http, ledger, tenant, bot, 1)
        _turn(http, ledger, tenant, "hook-prompt", hook.url)
        assert wait_for(
            lambda: platforms.fake.sent_to("telegram", chat) and hook.receiver.received,
            HANG_S + 10,
        )
        # ... while the slow ones are still being sent
        assert _deliveries(cluster, "reply", "sent") == 1
        assert _deliveries(cluster, "webhook", "sent") == 1
        assert platforms.fake.sent_to("telegram", slow_bot.chat(1)) == []

        assert wait_for(lambda: _deliveries(cluster, "reply", "sent") == 2, HANG_S + 10)
        assert wait_for(lambda: _deliveries(cluster, "webhook", "sent") == 2, HANG_S + 10)
        assert _deliveries(cluster, "reply", "retried") == 0
        assert _deliveries(cluster, "webhook", "retried") == 0
        sent = platforms.fake.sent

    received = [*slow_hook.receiver.received, *hook.receiver.received]
    end = observe_end(client, settings, ledger, received=received, sent=sent)
    violations = check(ledger, end)
    assert violations == [], report(violations)
