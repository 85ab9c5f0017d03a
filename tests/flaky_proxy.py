"""An HTTP proxy in front of the MLflow server that can answer 503 for a while, as an overloaded server or a load balancer would, or answer nothing at all, as a network partition does."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "host"}


class FlakyProxy:
    """Forwards every request to `upstream`; for `fail_for()`'s seconds it answers 503 instead, for `black_hole_for()`'s it drops them unanswered."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.failing_until = 0.0
        self.silent_until = 0.0
        self.dropped = 0
        self.refused = 0
        self.forwarded = 0
        self._client = httpx.Client(timeout=300)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, headers: dict, body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                if time.monotonic() < proxy.silent_until:  # the request is lost: no answer, and the connection dies when the partition heals
                    proxy.dropped += 1
                    time.sleep(max(0.0, proxy.silent_until - time.monotonic()))
                    self.close_connection = True
                    return
                if time.monotonic() < proxy.failing_until:
                    proxy.refused += 1
                    self._answer(503, {"Content-Type": "text/plain"}, b"Service Unavailable")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                try:
                    response = proxy._client.request(self.command, proxy.upstream + self.path, headers=headers, content=body)
                except httpx.HTTPError:
                    self._answer(502, {"Content-Type": "text/plain"}, b"Bad Gateway: the MLflow server is not answering")
                    return
                proxy.forwarded += 1
                self._answer(response.status_code, {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}, response.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def fail_for(self, seconds: float) -> None:
        self.failing_until = time.monotonic() + seconds

    def black_hole_for(self, seconds: float) -> None:
        self.silent_until = time.monotonic() + seconds

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()
