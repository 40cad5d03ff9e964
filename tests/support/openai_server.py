"""A loopback OpenAI-compatible chat server, so ``ChatOpenAI`` really runs over HTTP.

It records every prompt it receives, tracks how many calls per conversation are in
flight at once, and can be told to answer the next requests with errors or to hang.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = tuple[str, ...]  # ("ok",) | ("status", "429", "<retry-after>") | ("hang",) | ("drop",)


@dataclass
class Recorded:
    messages: list[dict[str, Any]]
    started: float
    finished: float = 0.0


@dataclass
class ModelServerState:
    latency_s: float = 0.0
    latency_of: Callable[[list[dict[str, Any]]], float] | None = None
    conversation_of: Callable[[list[dict[str, Any]]], str] = lambda _m: ""
    prompts: list[Recorded] = field(default_factory=list)
    script: list[Behaviour] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    guard: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)

    def next_behaviour(self) -> Behaviour:
        with self.guard:
            return self.script.pop(0) if self.script else ("ok",)


def reply_text(messages: list[dict[str, Any]]) -> str:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {"content": ""})
    return f"ack {last['content']}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        behaviour = state.next_behaviour()
        if behaviour[0] == "status":
            self._send_json(
                int(behaviour[1]),
                {"error": {"message": "scripted failure"}},
                {"retry-after": behaviour[2]} if len(behaviour) > 2 else {},
            )
            return
        if behaviour[0] == "hang":
            state.closing.wait(120)
            return
        if behaviour[0] == "drop":  # the connection dies before any response
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        messages = body["messages"]
        conversation = state.conversation_of(messages)
        record = Recorded(messages=messages, started=time.monotonic())
        with state.guard:
            state.prompts.append(record)
            state.in_flight[conversation] += 1
            state.max_in_flight[conversation] = max(
                state.max_in_flight[conversation], state.in_flight[conversation]
            )
        try:
            latency = state.latency_of(messages) if state.latency_of else state.latency_s
            if latency:
                state.closing.wait(latency)
            text = reply_text(messages)
            if body.get("stream"):
                self._send_stream(body.get("model", "m"), text)
            else:
                self._send_json(200, _completion(body.get("model", "m"), text), {})
        finally:
            record.finished = time.monotonic()
            with state.guard:
                state.in_flight[conversation] -= 1

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, model: str, text: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            self._event(
                _chunk(model, {"content": piece, **({"role": "assistant"} if i == 0 else {})})
            )
        self._event(_chunk(model, {}, finish="stop"))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, state: ModelServerState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class ModelServer:
    """``with ModelServer() as model: model.base_url ...``; serves on a free loopback port."""

    def __init__(self, **state: Any) -> None:
        self.state = ModelServerState(**state)
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.closing.set()
        self._server.shutdown()
        self._server.server_close()
