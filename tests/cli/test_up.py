"""``chatlane up``: the embedded default, its Redis, and refusing to run misconfigured."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from cli.redis_server import ManagedRedis, free_port
from shared.keys import SessionKeys
from shared.redis import answers

ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("CHATLANE_", "OPENAI_"))}


class Up:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, api_port: int) -> None:
        self.proc, self.log, self.base = proc, log, f"http://127.0.0.1:{api_port}"

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, marker: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while marker not in self.output:
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, self.output
            time.sleep(0.1)

    def exit_code(self, timeout_s: float = 60) -> int:
        return self.proc.wait(timeout=timeout_s)


@contextmanager
def chatlane_up(tmp_path: Path, *args: str, terminal: bool = False, **env: str) -> Iterator[Up]:
    """``chatlane up`` in the background; ``terminal``: in a process group of its own, as
    a shell runs a foreground command (Ctrl-C there signals the whole group)."""
    api_port = free_port()
    log = tmp_path / f"up-{api_port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--port", str(api_port), *args],
            cwd=ROOT, env={**CLEAN_ENV, "PYTHONUNBUFFERED": "1", **env},
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=terminal,
        )  # fmt: skip
    try:
        yield Up(proc, log, api_port)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_up_keeps_its_managed_redis_data_across_a_restart(tmp_path: Path) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    data = tmp_path / "data"
    assert not answers(redis_url)
    with chatlane_up(tmp_path, "--data-dir", str(data), CHATLANE_REDIS_URL=redis_url) as up:
        up.wait_for("chatlane: up at")
        assert "started redis-server (pid " in up.output
        assert f"on {redis_url}, database 0; data kept in {data.resolve() / 'redis'}" in up.output
        reply = httpx.post(f"{up.base}/v1/sessions/demo/turns?wait=10", json={"content": "hello"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["output"]["content"] == "echo: hello (saw 0 earlier messages)"
        up.proc.send_signal(signal.SIGINT)
        assert up.exit_code() == 0
        assert "chatlane: stopped" in up.output
    assert not answers(redis_url, timeout_s=0.2)  # the managed Redis went with it
    assert (data / "redis").is_dir()

    with chatlane_up(tmp_path, "--data-dir", str(data), CHATLANE_REDIS_URL=redis_url) as again:
        again.wait_for("chatlane: up at")
        history = httpx.get(f"{again.base}/v1/sessions/demo/messages").json()
        assert [m["data"]["content"] for m in history["data"]] == [
            "hello",
            "echo: hello (saw 0 earlier messages)",
        ]


def test_up_says_which_existing_redis_it_uses(redis_url: str, tmp_path: Path) -> None:
    database_url = redis_url.rsplit("/", 1)[0] + "/7"
    with chatlane_up(tmp_path, CHATLANE_REDIS_URL=database_url, CHATLANE_KEY_PREFIX="uptest") as up:
        up.wait_for("chatlane: up at")
        assert f"using the server already running at {database_url}, database 7" in up.output
    cleaner = redis.Redis.from_url(database_url)
    cleaner.flushdb()  # database 7 of the tests' own server
    cleaner.close()


def test_up_stops_and_says_so_when_its_redis_dies(tmp_path: Path) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    with chatlane_up(tmp_path, "--data-dir", str(tmp_path), CHATLANE_REDIS_URL=redis_url) as up:
        up.wait_for("chatlane: up at")
        pid = int(re.search(r"started redis-server \(pid (\d+)\)", up.output).group(1))  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)  # a process this test's chatlane started
        assert up.exit_code(timeout_s=30) == 1
        assert "the managed redis-server exited" in up.output


def test_up_refuses_a_model_it_cannot_build_and_names_the_setting(tmp_path: Path) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    with chatlane_up(
        tmp_path, "--data-dir", str(tmp_path),
        CHATLANE_REDIS_URL=redis_url, CHATLANE_MODEL="openai:gpt-4o-mini",
    ) as up:  # fmt: skip
        assert up.exit_code(timeout_s=60) != 0
        assert "chatlane worker: CHATLANE_MODEL=openai:gpt-4o-mini needs OPENAI_API_KEY" in (
            up.output
        )
        assert "up at" not in up.output


def test_up_refuses_a_redis_that_evicts_keys(tmp_path: Path) -> None:
    with ManagedRedis() as evicting:
        client = redis.Redis.from_url(evicting.url)
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.close()
        with chatlane_up(tmp_path, CHATLANE_REDIS_URL=evicting.url) as up:
            assert up.exit_code(timeout_s=30) == 2
            assert "evicts keys when full (maxmemory-policy allkeys-lru)" in up.output


def test_up_refuses_to_stand_in_for_a_redis_on_another_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import main

    monkeypatch.setenv("CHATLANE_REDIS_URL", "redis://redis.example.invalid:6379/0")
    monkeypatch.setattr(main, "_probe", lambda url: ("none", "no route"))  # no lookups here
    monkeypatch.setattr(main, "ManagedRedis", None)  # starting one would be a bug

    assert main.run_up("127.0.0.1", free_port(), Path("unused")) == 2
    assert "no Redis answers at redis://redis.example.invalid:6379/0" in capsys.readouterr().err


def test_ctrl_c_at_a_terminal_stops_the_worker_before_its_redis(tmp_path: Path) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    data = str(tmp_path / "data")
    with chatlane_up(
        tmp_path, "--data-dir", data, terminal=True, CHATLANE_REDIS_URL=redis_url
    ) as up:
        up.wait_for("chatlane: up at")
        waiting = httpx.post(
            f"{up.base}/v1/sessions/burst/turns",
            json={"content": "hi", "strategy": "coalesce", "debounce_s": 30},
        )
        assert waiting.status_code == 202
        lock = SessionKeys("chatlane", "default", "burst").lock
        with redis.Redis.from_url(redis_url) as store:
            deadline = time.monotonic() + 10
            while not store.exists(lock):  # a worker holds the session for 30 s now
                assert time.monotonic() < deadline, up.output
                time.sleep(0.05)
        started = time.monotonic()
        os.killpg(up.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert up.exit_code() == 0
        assert time.monotonic() - started < 20  # not held up by the debounce
        assert "chatlane: stopped" in up.output
        assert "Connection refused" not in up.output  # Redis outlived what writes to it
    assert not answers(redis_url, timeout_s=0.2)
