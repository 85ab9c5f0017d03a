"""A TCP proxy on 127.0.0.1 that can take a server away, as its restart does to its clients.

    proxy = TcpProxy("127.0.0.1", 5432)   # clients connect to 127.0.0.1:proxy.port instead
    proxy.down()                          # every open connection closed at once, new ones reset
    proxy.up()                            # connections go through again
    proxy.outage(60)                      # down now, up by itself 60 s later

Used by tests/production_stack.py (`db_proxy=True`) to take Postgres away from one stack without
touching the server other tests share.
"""

from __future__ import annotations

import socket
import struct
import threading


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._is_up = True
        self.cuts = 0  # connections closed by down()
        self.refused = 0  # connections reset while down
        threading.Thread(target=self._accept, daemon=True, name=f"tcp-proxy-{self.port}").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            try:
                if not self._is_up:
                    raise ConnectionRefusedError
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                self.refused += 1
                _reset(client)
                continue
            with self._lock:
                if not self._is_up:  # went down while connecting
                    _reset(client)
                    _reset(upstream)
                    continue
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= {src, dst}
            for sock in (src, dst):
                _close(sock)

    def down(self) -> None:
        """Close every open connection (both ends) and reset new ones until `up()`."""
        with self._lock:
            self._is_up = False
            cut, self._open = self._open, set()
        self.cuts += len(cut) // 2
        for sock in cut:
            _close(sock)

    def up(self) -> None:
        self._is_up = True

    def outage(self, seconds: float) -> threading.Timer:
        """`down()` now and `up()` after `seconds`; returns the timer (join it to wait for the end)."""
        self.down()
        timer = threading.Timer(seconds, self.up)
        timer.daemon = True
        timer.start()
        return timer

    def close(self) -> None:
        self._listener.close()
        self.down()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pump thread blocked in recv; the peer reads EOF
    except OSError:
        pass
    sock.close()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, as a refused connection
    sock.close()
