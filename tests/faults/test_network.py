"""Network faults between real worker processes and Redis, and between them and the model,
injected by loopback proxies (``tests.support.proxy.FaultProxy``): latency on every
chunk, every connection reset at once, a blackhole (bytes accepted, nothing answered)
longer than the lock's lease, and connections a blackhole leaves dead for good. The API
and the checks talk to Redis directly; the workers reach Redis (data and broker) and the
model only through the proxies.

Under each fault every accepted turn must end ``completed`` or ``failed`` with a reason,
exactly once in history (the ledger checker), within a bound derived from the settings,
so that a hang fails the test. One cluster serves the module (its boot would otherwise
be most of each test); each test has sessions of its own and lifts its faults.

The broker's side of dead connections has a cluster of its own: a Celery
consumer left on a dead broker connection takes wake-ups again once kombu's socket
timeout and health check find it dead.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from shared.keys import SessionKeys
from shared.redis import COMMAND_TIMEOUT_S, sync_client
from shared.settings import Settings
from tests.conftest import isolated_settings
from tests.support.checker import message_for
from tests.support.cluster import Cluster
from tests.support.faults import metrics_of, settle, verdict, wait_for
from tests.support.proxy import FaultProxy
from tests.support.streaming_server import StreamingModelServer
from tests.support.traffic import Told, Traffic, User

MARGIN_S = 10.0  # scheduling on a busy 2-core machine; far below what a hang takes
NETWORK_SETTINGS = {
    "lock_ttl_s": 1.5,
    "sweep_interval_s": 0.3,
    "model_timeout_s": 1.5,
    "model_max_retries": 2,
    "retry_backoff_s": 0.05,
    "turn_deadline_s": 6.0,
}


@dataclass
class Net:
    """The API (direct to Redis), the workers (behind the proxies), the settings the API
    reads (the workers' differ only in their Redis and broker URLs) and a client that
    reads Redis directly."""

    direct: Settings
    data: FaultProxy  # the workers' session data
    broker: FaultProxy  # the workers' Celery broker (the same Redis)
    model: FaultProxy  # the workers' model server
    stub: StreamingModelServer  # behind ``model``
    api: Cluster
    workers: Cluster
    client: redis.Redis
    revived: set[str] = field(default_factory=set)
    exits: list[str] = field(default_factory=list)  # workers that exited, and why

    def clear_faults(self) -> None:
        for proxy in (self.data, self.broker, self.model):
            proxy.delay(0)
            proxy.restore()

    def _named_procs(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        return list(zip(self.workers.worker_metrics, self.workers.worker_procs, strict=True))

    def metric(self, name: str, label: str | None = None) -> float:
        """``name`` summed over the worker processes that run."""
        live = [n for n, proc in self._named_procs() if proc.poll() is None]
        return metrics_of([self.workers.worker_metrics[n] for n in live], name, label)

    def revive(self) -> None:
        """Start a worker in place of each one that exited, as the deployment's supervisor
        would (compose: ``restart: unless-stopped``), and note why it exited (kombu 5.7
        may give up on a reset broker connection: "Unrecoverable error")."""
        for name, proc in self._named_procs():
            if proc.poll() is None or name in self.revived:
                continue
            self.revived.add(name)
            log = (self.workers.logs / f"{name}.log").read_text(errors="replace")
            errors = [line for line in log.splitlines() if "Unrecoverable error" in line]
            self.exits.append(f"{name} exited ({proc.returncode}): {errors[-1:] or 'no error'}")
            self.workers.start_worker(f"{name}r")

    def fenced(self) -> float:
        """Times a worker found its lease gone: commits refused, drains given up."""
        return self.metric("chatlane_commits_total", "not_owner") + self.metric(
            "chatlane_drains_total", "lost_lock"
        )


@pytest.fixture(scope="module")
def net(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    target = urlsplit(redis_url)
    host, port = target.hostname or "127.0.0.1", target.port or 6379
    logs: Path = tmp_path_factory.mktemp("network-logs")
    with (
        StreamingModelServer(tokens=30, interval_s=0.01) as stub,
        FaultProxy(host, port) as data,
        FaultProxy(host, port) as broker,
        FaultProxy("127.0.0.1", stub.port) as model,
        isolated_settings(redis_url) as build,
    ):
        direct = build(
            model="openai:loopback",
            openai_base_url=model.url(stub.base_url),
            openai_api_key="test-key",
            **NETWORK_SETTINGS,
        )
        proxied = direct.model_copy(
            update={"redis_url": data.url(redis_url), "broker_url": broker.url(redis_url)}
        )
        client = sync_client(redis_url)
        try:
            with (
                Cluster(proxied, logs, workers=2, concurrency=32, api=False) as workers,
                Cluster(direct, logs / "api", workers=0) as api,
            ):
                yield Net(direct, data, broker, model, stub, api, workers, client)
        finally:
            client.close()


@pytest.fixture
def net_faults(net: Net) -> Iterator[Net]:
    """The module's cluster, every worker running, every fault lifted after the test."""
    net.revive()
    net.clear_faults()
    try:
        yield net
    finally:
        net.clear_faults()


def recovery_bound_s(s: Settings) -> float:
    """How long after a Redis fault ends every turn must have ended: one still streaming
    may run to its deadline; one whose worker was cut off waits out the lease, the
    sweeper's grace (two intervals) and a re-wake that may have backed off once."""
    return s.turn_deadline_s + 2 * s.lock_ttl_s + 3 * s.sweep_interval_s + MARGIN_S


def _records(net: Net, told: list[Told]) -> list[dict[str, object]]:
    s = net.direct
    keys = [SessionKeys(s.key_prefix, t.tenant, t.session) for t in told]
    raws = [net.client.hget(k.turns, t.turn_id) for k, t in zip(keys, told, strict=True)]
    assert all(raws), "an accepted turn has no record"
    return [json.loads(str(raw)) for raw in raws]


def _ends_within(net: Net, told: list[Told], bound_s: float, since: float | None = None) -> float:
    """Wait until every told turn has ended, failing the test past ``bound_s`` after
    ``since`` (a ``time.monotonic()``; by default now); how long after ``since`` it was.
    A worker that exits meanwhile is replaced."""
    start = time.monotonic() if since is None else since
    while True:
        net.revive()
        try:
            settle(net.direct, told, timeout_s=min(max(start + bound_s - time.monotonic(), 0.1), 2))
            return time.monotonic() - start
        except AssertionError:
            if time.monotonic() >= start + bound_s:
                raise


def _judge(net: Net, told: list[Told]) -> dict[str, int]:
    """The checker's verdict must be clean (nothing lost, duplicated, reordered, foreign or
    stuck; one final event per turn) and every turn ``completed`` or ``failed`` with a
    reason; the end states, counted."""
    problems = verdict(net.direct, told)
    assert problems == [], "\n".join(problems[:40])
    ends: dict[str, int] = {}
    for record in _records(net, told):
        status = str(record["status"])
        ends[status] = ends.get(status, 0) + 1
        assert status in ("completed", "failed"), record
        if status == "failed":
            error = record.get("error")
            assert isinstance(error, dict) and error.get("code") and error.get("message"), record
    return ends


def _longest_s(net: Net, told: list[Told]) -> float:
    """The longest any turn took from acceptance to its end, by its record."""
    spans = [
        (int(str(r["finished_at"])) - int(str(r["created_at"]))) / 1000 for r in _records(net, told)
    ]
    return max(spans, default=0.0)


def _attempts(net: Net, told: list[Told]) -> int:
    """The most attempts any turn took (above 1: a worker lost it and another took over)."""
    return max((int(str(r["attempt"])) for r in _records(net, told)), default=0)


def _traffic(net: Net, prefix: str, users: int, pause_s: float) -> Traffic:
    tenant = net.direct.default_tenant
    return Traffic(net.api.base_urls, [User(tenant, f"{prefix}{i:02d}") for i in range(users)],
                   pause_s=pause_s)  # fmt: skip


def _report(net: Net, name: str, told: list[Told], ends: dict[str, int], took: float) -> None:
    longest, attempts = _longest_s(net, told), _attempts(net, told)
    print(f"\n{name}: {len(told)} turns {ends}; all ended {took:.1f} s after the fault, "
          f"the longest took {longest:.1f} s, attempts <= {attempts}")  # fmt: skip
    for gone in net.exits:
        print(f"  a worker exited and was replaced: {gone}")
    net.exits.clear()


# -- worker <-> Redis ------------------------------------------------------------------


def test_redis_latency_under_load_slows_turns_but_loses_and_duplicates_none(
    net_faults: Net,
) -> None:
    net, s = net_faults, net_faults.direct
    for proxy in (net.data, net.broker):
        proxy.delay(0.05, 0.2)  # per chunk, each way: a round trip costs 0.1-0.4 s
    with _traffic(net, "lat", users=10, pause_s=1.0) as traffic:
        time.sleep(2.5)
    took = _ends_within(net, traffic.told, recovery_bound_s(s))
    ends = _judge(net, traffic.told)
    _report(net, "latency", traffic.told, ends, took)
    assert ends == {"completed": len(traffic.told)}
    # A user waits about a turn between messages: a turn may queue behind one other.
    assert _longest_s(net, traffic.told) < 2 * (s.turn_deadline_s + s.lock_ttl_s) + MARGIN_S
    assert traffic.unexpected() == {}


def test_every_worker_connection_to_redis_reset_mid_turn_loses_and_duplicates_none(
    net_faults: Net,
) -> None:
    net, s = net_faults, net_faults.direct
    for proxy in (net.data, net.broker):
        proxy.delay(0.01, 0.04)  # commands spend a while on the wire: resets catch them
    reset = 0
    with _traffic(net, "rst", users=8, pause_s=0.3) as traffic:
        for _ in range(3):
            time.sleep(0.6)
            reset += net.data.reset() + net.broker.reset()
    took = _ends_within(net, traffic.told, recovery_bound_s(s))
    ends = _judge(net, traffic.told)
    _report(net, f"resets ({reset} connections)", traffic.told, ends, took)
    assert reset > 8
    # A turn whose workers were cut off three times fails as attempts_exhausted.
    assert ends.get("completed", 0) >= len(traffic.told) * 0.9


def test_redis_blackholed_longer_than_the_lease_then_restored_loses_and_duplicates_none(
    net_faults: Net,
) -> None:
    net, s = net_faults, net_faults.direct
    fenced = net.fenced()
    with _traffic(net, "bh", users=8, pause_s=0.3) as traffic:
        time.sleep(0.6)
        for proxy in (net.data, net.broker):
            proxy.blackhole()
        time.sleep(2 * s.lock_ttl_s)  # every lease held expires in the dark
        for proxy in (net.data, net.broker):
            proxy.restore()
        restored = time.monotonic()
        time.sleep(0.5)
    took = _ends_within(net, traffic.told, recovery_bound_s(s), since=restored)
    ends = _judge(net, traffic.told)
    _report(net, "blackhole", traffic.told, ends, took)
    assert ends == {"completed": len(traffic.told)}
    # The leases did expire: the workers' late writes were fenced out, others took over.
    assert net.fenced() > fenced
    assert _attempts(net, traffic.told) >= 2


def test_redis_connections_a_blackhole_leaves_dead_are_given_up_after_the_socket_timeout(
    net_faults: Net,
) -> None:
    """A NAT or firewall that lost its state: the data connections open through the
    blackhole never carry another byte, new ones work. Commands waiting on a dead
    connection fail after the client's socket timeout and their turns are taken over."""
    net, s = net_faults, net_faults.direct
    net.data.delay(0.01, 0.03)  # commands in flight when the connections die
    with _traffic(net, "dead", users=8, pause_s=0.3) as traffic:
        time.sleep(0.6)
        net.data.blackhole()
        time.sleep(0.5)
        stranded = net.data.strand()
        net.data.restore()
        restored = time.monotonic()
        time.sleep(0.5)
    took = _ends_within(net, traffic.told, COMMAND_TIMEOUT_S + recovery_bound_s(s), restored)
    ends = _judge(net, traffic.told)
    _report(net, f"dead connections ({stranded})", traffic.told, ends, took)
    assert stranded > 0
    assert ends == {"completed": len(traffic.told)}


# -- worker <-> model ------------------------------------------------------------------


def _post(http: httpx.Client, s: Settings, session: str, extra: str) -> Told:
    content = f"{message_for(session, 0)} {extra}"
    answer = http.post(f"/v1/sessions/{session}/turns", json={"content": content})
    assert answer.status_code == 202, answer.text
    turn = answer.json()
    return Told(s.default_tenant, session, content, turn["id"], turn["seq"], "enqueue",
                time.monotonic())  # fmt: skip


def _streaming(net: Net, told: list[Told]) -> Callable[[], bool]:
    """Whether every told turn has streamed some of its reply to its events."""
    s = net.direct

    def streamed(t: Told) -> bool:
        events = net.client.xrange(SessionKeys(s.key_prefix, t.tenant, t.session).events)
        for _, fields in events or []:
            if fields and fields.get("type") == "delta" and fields.get("turn") == t.turn_id:
                return True
        return False

    return lambda: all(streamed(t) for t in told)


@pytest.fixture
def http(net: Net) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=net.api.base_url, timeout=30) as client:
        yield client


def test_model_connections_reset_mid_stream_are_retried_and_complete_once(
    net_faults: Net, http: httpx.Client
) -> None:
    net, s = net_faults, net_faults.direct
    retries = net.metric("chatlane_model_retries_total")
    told = [_post(http, s, f"mreset{i}", "tokens=60 interval=0.02") for i in range(6)]
    assert wait_for(_streaming(net, told), 10)
    reset = net.model.reset()
    took = _ends_within(net, told, s.turn_deadline_s + MARGIN_S)
    ends = _judge(net, told)
    _report(net, f"model reset ({reset} connections)", told, ends, took)
    assert ends == {"completed": 6}
    assert net.metric("chatlane_model_retries_total") - retries >= 6
    for record in _records(net, told):
        assert record["attempt"] == 1  # tried again within the attempt: no takeover
        assert record["output"] == {"content": " ".join(f"w{i}" for i in range(60))}


def test_a_model_blackholed_briefly_resumes_its_stream_without_a_retry(
    net_faults: Net, http: httpx.Client
) -> None:
    net, s = net_faults, net_faults.direct
    retries = net.metric("chatlane_model_retries_total")
    told = [_post(http, s, f"mpause{i}", "tokens=40 interval=0.02") for i in range(4)]
    assert wait_for(_streaming(net, told), 10)
    net.model.blackhole()
    time.sleep(s.model_timeout_s / 3)  # shorter than a read may wait
    net.model.restore()
    took = _ends_within(net, told, s.turn_deadline_s + MARGIN_S)
    ends = _judge(net, told)
    _report(net, "model paused", told, ends, took)
    assert ends == {"completed": 4}
    assert net.metric("chatlane_model_retries_total") == retries


def test_a_model_that_stalls_mid_stream_is_cut_off_by_its_timeout_and_the_retry_completes(
    net_faults: Net, http: httpx.Client
) -> None:
    net, s = net_faults, net_faults.direct
    retries = net.metric("chatlane_model_retries_total")
    net.stub.script.append(("stall_after", 5))  # the next request: 5 words, then silence
    told = [_post(http, s, "mstall", "tokens=20")]
    took = _ends_within(net, told, s.turn_deadline_s + MARGIN_S)
    ends = _judge(net, told)
    _report(net, "model stalled", told, ends, took)
    assert ends == {"completed": 1}
    assert net.metric("chatlane_model_retries_total") - retries == 1
    assert took >= s.model_timeout_s  # the stalled read was waited for, then given up
    [record] = _records(net, told)
    assert record["output"] == {"content": " ".join(f"w{i}" for i in range(20))}


def test_a_model_blackholed_past_the_retry_budget_fails_its_turns_with_a_reason_in_time(
    net_faults: Net, http: httpx.Client
) -> None:
    net, s = net_faults, net_faults.direct
    told = [_post(http, s, f"mdark{i}", "tokens=200 interval=0.02") for i in range(4)]
    assert wait_for(_streaming(net, told), 10)
    net.model.blackhole()  # the streams stop; every retry connects into the dark too
    took = _ends_within(net, told, s.turn_deadline_s + MARGIN_S)
    net.model.restore()
    ends = _judge(net, told)
    _report(net, "model blackholed", told, ends, took)
    assert ends == {"failed": 4}
    for record in _records(net, told):
        error = record["error"]
        assert isinstance(error, dict)
        assert error["code"] in ("retries_exhausted", "deadline_exceeded"), error
    # Each try waited out the model timeout; the turn never outlived its deadline.
    assert s.model_timeout_s <= took < s.turn_deadline_s + MARGIN_S
    # The sessions are not wedged: their next turns stream from the restored model.
    after = [_post(http, s, f"mdark{i}", "again") for i in range(4)]
    _ends_within(net, after, s.turn_deadline_s + MARGIN_S)
    assert _judge(net, told + after) == {"failed": 4, "completed": 4}


# -- worker <-> broker, with its own cluster -------------------------------------------


def test_a_worker_whose_broker_connections_a_blackhole_left_dead_takes_wake_ups_again(
    fault_settings: Callable[..., Settings],
    streaming_model: StreamingModelServer,
    tmp_path: Path,
) -> None:
    """As above, on the broker side: the worker's Celery connections are left dead and new
    ones work. A wake-up must reach a worker again within the socket timeouts (kombu's
    synchronous commands, each bounded by one, and its check of an overdue BRPOP) plus
    the recovery bound."""
    s = fault_settings(**NETWORK_SETTINGS)
    target = urlsplit(s.redis_url)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as broker:
        proxied = s.model_copy(update={"broker_url": broker.url(s.redis_url)})
        with (
            Cluster(proxied, tmp_path, workers=1, concurrency=8, api=False) as workers,
            Cluster(s, tmp_path / "api", workers=0) as api,
            httpx.Client(base_url=api.base_url, timeout=30) as http,
        ):
            client = sync_client(s.redis_url)
            net = Net(s, broker, broker, broker, streaming_model, api, workers, client)
            try:
                before = _post(http, s, "brk", "before")
                _ends_within(net, [before], s.turn_deadline_s + MARGIN_S)
                broker.blackhole()
                time.sleep(1.0)
                assert broker.strand() > 0
                broker.restore()
                restored = time.monotonic()
                after = _post(http, s, "brk", "after")
                bound = 3 * COMMAND_TIMEOUT_S + recovery_bound_s(s)
                took = _ends_within(net, [after], bound, since=restored)
                ends = _judge(net, [before, after])
                _report(net, "dead broker connections", [before, after], ends, took)
                assert ends == {"completed": 2}
            finally:
                broker.reset()  # frees a consumer stuck on a dead connection, so it can stop
                client.close()
