"""A local OpenAI-compatible /chat/completions server whose answers, failures and delays a test scripts.

    with stub_openai_server(answers={"idiot": "9"}, fail_first=2) as stub:
        LLMJudge(base_url=stub.url, ...)
        stub.requests[0].headers["authorization"], stub.peak_in_flight

Answers are chosen by substring of the first user message (the rendered rubric); a list gives one
answer per matching request, its last repeating. The first `fail_first` requests get `fail_status`
(with Retry-After when `retry_after` is set); every request then waits `delay_s` before answering.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    """Lower-cased header names."""
    body: dict
    status: int = 0


@dataclass
class StubOpenAI:
    answers: dict[str, str | list[str]] = field(default_factory=dict)
    default_answer: str = "0"
    fail_first: int = 0
    fail_status: int = 429
    retry_after: str | None = None
    delay_s: float = 0.0
    raw_body: bytes | None = None
    """Sent as the 200 body instead of a chat completion (a proxy's HTML page, broken JSON)."""
    echo_auth: bool = False
    """Error bodies quote the Authorization header, as some servers quote a wrong key."""
    url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closing: threading.Event = field(default_factory=threading.Event, repr=False)
    _turns: dict[str, int] = field(default_factory=dict, repr=False)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._turns.clear()
            self.peak_in_flight = 0

    def _answer_for(self, text: str) -> str:
        for key, answer in self.answers.items():
            if key in text:
                if isinstance(answer, str):
                    return answer
                turn = self._turns.get(key, 0)
                self._turns[key] = turn + 1
                return answer[min(turn, len(answer) - 1)]
        return self.default_answer

    def _handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"unparsed": raw.decode("utf-8", "replace")}
        record = RecordedRequest(path=path, headers=headers, body=body)
        with self._lock:
            self.requests.append(record)
            failing = len(self.requests) <= self.fail_first
            if not failing and path.endswith("/chat/completions"):
                users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
                answer = self._answer_for(users[0] if users else "")
        if self.delay_s:
            self._closing.wait(self.delay_s)
        if failing:
            record.status = self.fail_status
            extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            message = f"stub: refused key {headers.get('authorization', '')}" if self.echo_auth else "stub: try again later"
            return self.fail_status, extra, json.dumps({"error": {"message": message}}).encode()
        if not path.endswith("/chat/completions"):
            record.status = 404
            return 404, {}, b'{"error": {"message": "not found"}}'
        record.status = 200
        if self.raw_body is not None:
            return 200, {}, self.raw_body
        completion = {
            "id": f"chatcmpl-stub-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
        return 200, {}, json.dumps(completion).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that timed out has closed its socket; the late answer's broken pipe is expected."""


@contextlib.contextmanager
def stub_openai_server(**behaviour) -> Iterator[StubOpenAI]:
    """Serve on 127.0.0.1 at a free port for the block; `stub.url` ends in /v1."""
    stub = StubOpenAI(**behaviour)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        """Headers and body go out in two writes; Nagle plus delayed ACK would add ~40 ms to each answer."""

        def log_message(self, *args):
            pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with stub._lock:
                stub.in_flight += 1
                stub.peak_in_flight = max(stub.peak_in_flight, stub.in_flight)
            try:
                status, extra, payload = stub._handle(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
            finally:
                with stub._lock:
                    stub.in_flight -= 1
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    server = _Server(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub._closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
