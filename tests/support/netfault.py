"""A real network fault between a service and its store: a TCP proxy that can go down (every connection, open
or new, is closed without an answer) and come back, by hand or the moment a request line it watches for passes.
(A store outage that a test controls: moto keeps its data in memory, so the store itself cannot be restarted.)"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["FlakyProxy"]

_CHUNK = 1 << 16


class FlakyProxy:
    """Forwards ``127.0.0.1:{port}`` to ``target`` (host, port) while up."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.cut_on: bytes | None = None  # go down when a request carries these bytes (e.g. b"/exports/")
        self.went_down = threading.Event()
        self.refused = 0  # connections closed unanswered while down
        threading.Thread(target=self._accept, daemon=True, name="flaky-proxy").start()

    def down(self) -> None:
        self._up.clear()
        self.went_down.set()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def up(self) -> None:
        self.cut_on = None
        self._up.set()

    def close(self) -> None:
        self.down()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, watched: bool) -> None:
        try:
            while data := source.recv(_CHUNK):
                if watched and self.cut_on is not None and self.cut_on in data:
                    self.down()
                    return
                if not self._up.is_set():
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()
