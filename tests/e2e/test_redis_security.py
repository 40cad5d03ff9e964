"""Redis that wants a password, an ACL user or TLS: the API and a worker (real processes)
run a turn through it, and neither the Redis password nor the OpenAI key ever shows in
their logs, ``/metrics``, ``/readyz``, an error answer or ``repr(Settings)``."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from pydantic import ValidationError

from cli.redis_server import free_port
from shared.settings import Settings
from tests.cli.test_up import chatlane_up
from tests.conftest import TEST_DEFAULTS
from tests.support.cluster import Cluster
from tests.support.secure_redis import (
    Certs,
    PrivateRedis,
    make_certs,
    with_acl_user,
    with_password,
    with_tls,
)

# Random parts long enough that any 10 characters of them showing anywhere is a leak,
# whether the secret was printed whole, percent-encoded or cut short. The password also
# holds the characters a URL must percent-encode.
PASSWORD_CORE = secrets.token_hex(12)
PASSWORD = f"p@ss:{PASSWORD_CORE}/%?"
OPENAI_CORE = secrets.token_hex(16)
OPENAI_KEY = f"sk-test-{OPENAI_CORE}"


def leaks(text: str) -> list[str]:
    """Which secrets ``text`` shows some of."""
    found = []
    for name, core in (("Redis password", PASSWORD_CORE), ("OpenAI key", OPENAI_CORE)):
        if any(core[i : i + 10] in text for i in range(len(core) - 9)):
            found.append(name)
    return found


def _settings(**overrides: object) -> Settings:
    values = {**TEST_DEFAULTS, "auth": "open", "openai_api_key": OPENAI_KEY, **overrides}
    return Settings(**values)  # type: ignore[arg-type]


def test_the_leak_check_sees_a_secret_printed_in_any_form() -> None:
    assert leaks(f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:1/0") == ["Redis password"]
    assert leaks(f"key ...{OPENAI_KEY[-12:]}") == ["OpenAI key"]
    assert leaks(f"redis://:***@127.0.0.1:1/0 sk-test-{OPENAI_CORE[:9]}") == []


def test_a_settings_error_names_the_setting_and_echoes_nothing_given() -> None:
    with pytest.raises(ValidationError, match="CHATLANE_TURN_DEADLINE_S") as refused:
        _settings(
            redis_url=f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:1/0",
            turn_deadline_s=1,
            model_timeout_s=10,
        )
    printed = f"{refused.value}\n{refused.value!r}"  # as a traceback shows it
    assert "input_value" not in printed  # else the first and last 25 characters of all given
    assert leaks(printed) == []


def test_up_uses_a_redis_that_wants_a_password_and_never_prints_it(tmp_path: Path) -> None:
    with (
        with_password(tmp_path / "redis", PASSWORD) as server,
        chatlane_up(
            tmp_path, CHATLANE_REDIS_URL=server.url, CHATLANE_KEY_PREFIX="up-secure",
            OPENAI_API_KEY=OPENAI_KEY,
        ) as up,
    ):  # fmt: skip
        up.wait_for("chatlane: up at")
        reply = httpx.post(f"{up.base}/v1/sessions/demo/turns?wait=10", json={"content": "hi"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "completed"
        up.proc.send_signal(signal.SIGINT)
        assert up.exit_code() == 0
        assert f"using the server already running at redis://:***@127.0.0.1:{server.port}/0" in (
            up.output
        )
        assert leaks(up.output) == []


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:1/0?ssl_cert_reqs=required",  # port 1: nothing answers
        f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:1/0",
    ],
    ids=["tls", "password"],
)
def test_up_does_not_stand_in_a_plain_redis_for_a_secured_one(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import main

    monkeypatch.setenv("CHATLANE_REDIS_URL", url)
    monkeypatch.setattr(main, "ManagedRedis", None)  # starting one would be a bug

    assert main.run_up("127.0.0.1", free_port(), Path("unused")) == 2
    err = capsys.readouterr().err
    assert "no Redis answers at" in err
    assert "TLS" in err or "password" in err
    assert leaks(err) == []


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@dataclass
class Deployment:
    server: PrivateRedis
    settings: Settings
    cluster: Cluster


KINDS = ("requirepass", "acl-user", "tls")


def _deployment(kind: str, directory: Path, certs: Certs) -> Deployment:
    if kind == "requirepass":
        server = with_password(directory / "redis", PASSWORD)
    elif kind == "acl-user":
        server = with_acl_user(directory / "redis", "chatlane", PASSWORD)
    else:
        # Data side: Celery's documented spelling, naming the CA. Broker: a bare rediss://
        # URL, trusting the system's CAs (SSL_CERT_FILE: the test CA); kombu, left to
        # itself, would not verify that server at all.
        server = with_tls(
            directory / "redis", PASSWORD, certs,
            f"?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs={certs.ca}",
        )  # fmt: skip
    broker = server.url.partition("?")[0] if kind == "tls" else None
    settings = _settings(redis_url=server.url, broker_url=broker)
    return Deployment(server, settings, Cluster(settings, directory / "logs", workers=1))


def _in_parallel(calls: list[Callable[[], object]]) -> None:
    with ThreadPoolExecutor(len(calls)) as pool:
        for done in [pool.submit(call) for call in calls]:
            done.result()


@pytest.fixture(scope="module")
def deployments(
    certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Deployment]]:
    """A private redis-server of each kind, with an API and a worker on it; all three
    start at once. Once they have stopped (each worker on its own, in time, though its
    Redis stalled), their logs must show no secret either."""
    with pytest.MonkeyPatch.context() as env, ExitStack() as stack:
        env.setenv("SSL_CERT_FILE", str(certs.ca))
        running = {kind: _deployment(kind, tmp_path_factory.mktemp(kind), certs) for kind in KINDS}
        clusters = [deployment.cluster for deployment in running.values()]
        for deployment in running.values():
            stack.enter_context(deployment.server)
        stack.callback(_in_parallel, [cluster.__exit__ for cluster in clusters])
        _in_parallel([cluster.__enter__ for cluster in clusters])
        yield running
        stack.close()
        logs = {
            f"{kind}/{log.name}": log.read_text(errors="replace")
            for kind, deployment in running.items()
            for log in deployment.cluster.logs.iterdir()
        }
    exits = {kind: d.cluster.worker_procs[0].returncode for kind, d in running.items()}
    assert exits == dict.fromkeys(KINDS, 0)  # not killed after the grace period
    assert [where for where, text in logs.items() if "insecure" in text] == []
    assert {where: leaks(text) for where, text in logs.items() if leaks(text)} == {}


@pytest.mark.parametrize("kind", KINDS)
def test_a_turn_runs_and_no_secret_shows_anywhere(
    kind: str, deployments: dict[str, Deployment]
) -> None:
    deployment = deployments[kind]
    server, settings, cluster = deployment.server, deployment.settings, deployment.cluster
    seen = {"repr(Settings)": repr(settings), "str(Settings)": str(settings)}
    with httpx.Client(base_url=cluster.base_url, timeout=30) as http:
        reply = http.post(f"/v1/sessions/{kind}/turns?wait=20", json={"content": "hello"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "completed"
        assert reply.json()["output"]["content"] == "echo: hello (saw 0 earlier messages)"
        for path in ("/readyz", f"/v1/sessions/{kind}/turns/nope", "/v1/sessions/a%20b"):
            seen[f"GET {path}"] = http.get(path).text
        with server.paused():  # 5 s: both of /readyz's checks time out
            unready = http.get("/readyz")
        assert unready.status_code == 503, unready.text
        seen["GET /readyz (Redis paused)"] = unready.text
        seen["GET /metrics"] = http.get("/metrics").text
    for log in cluster.logs.iterdir():
        seen[log.name] = log.read_text(errors="replace")
    assert {where: leaks(text) for where, text in seen.items() if leaks(text)} == {}
