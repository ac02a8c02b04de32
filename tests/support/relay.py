"""A TCP relay on loopback that holds back a connection's traffic from the first time a marker
passes through it: a network that stalls in the middle of an upload, for the real sockets of
a trainer and a scorer. ZeroMQ without CURVE sends its frames in clear, so the marker can be a
piece of a message header (b'"type":"checkpoint"')."""

from __future__ import annotations

import contextlib
import socket
import threading


class StallingRelay:
    def __init__(self, target_port: int, marker: bytes, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.marker = marker
        self.stalled = threading.Event()  # set once the marker was seen and held back
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"tcp://{host}:{self.port}"
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, watched: bool) -> None:
        tail = b""
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                if watched and not self.stalled.is_set():
                    if self.marker in tail + data:
                        self.stalled.set()  # this and all later bytes are held back
                    tail = data[-len(self.marker) :]
                if watched and self.stalled.is_set():
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> StallingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
