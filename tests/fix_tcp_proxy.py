"""A TCP proxy on a loopback port that tests can pause (nothing passes, what arrives is held) and point at
another target (a floating address moved by a failover: every connection through it is cut)."""

from __future__ import annotations

import contextlib
import socket
import threading

from generation_analytics.service.embedded import free_port


class TcpProxy:
    """Forwards connections on `port` to 127.0.0.1:`target_port`, one pair of pump threads each."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the target is down: the caller sees a reset, as without a proxy
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()  # paused: hold what arrived (dropped if the connection is cut meanwhile)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close_pair(source, sink)

    def _close_pair(self, *pair: socket.socket) -> None:
        with self._lock:
            for sock in pair:
                self._sockets.discard(sock)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def retarget(self, target_port: int) -> None:
        """From now on connect to `target_port`; every current connection is cut (its held data dropped)."""
        self.target_port = target_port
        with self._lock:
            current = list(self._sockets)
        self._close_pair(*current)
        self._flowing.set()

    def close(self) -> None:
        self._listener.close()
        self.retarget(free_port())
