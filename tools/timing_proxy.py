"""A TCP proxy on loopback that notes when each HTTP request through it began: the
``time.perf_counter()`` of its first bytes from the client, with its request line. The
bench puts it before its S3 server to see when a bundle's first byte went off-site.

Each connection has two pump threads, one each way. A request begins with the client's
first bytes after the server last spoke (HTTP/1.1 without pipelining, as boto3 sends);
bytes that do not open with a request line (a body after ``100 Continue``) are not one.
``perf_counter`` reads the system's monotonic clock, so another process on this machine
can compare its own readings with the times noted here."""

from __future__ import annotations

import contextlib
import multiprocessing
import re
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType

REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]")
# A request line longer than this is not looked for further (the bytes still pass).
LINE_MAX = 8192
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Request:
    """One request: when its first bytes came from the client (perf_counter), its method
    and its target (the path and query as sent)."""

    at: float
    method: str
    target: str


class _Connection:
    """A client's connection and ours to the server, and whether the next bytes from the
    client open a request."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.request_next = True

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TimingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``; :meth:`requests`
    lists the requests seen, oldest first."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._connections: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    def __enter__(self) -> TimingProxy:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._acceptor.join(5)
        with self._lock:
            connections, self._connections = self._connections, []
            threads = list(self._threads)
        for connection in connections:
            connection.close()  # wakes both pumps
        for thread in threads:
            thread.join(5)

    def requests(self, since: int = 0) -> list[Request]:
        """The requests seen, from the ``since``-th on."""
        with self._lock:
            return self._requests[since:]

    def _accept(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                try:
                    server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                except OSError:
                    client.close()
                    continue
                for sock in (client, server):
                    sock.settimeout(None)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection = _Connection(client, server)
                pumps = [
                    threading.Thread(target=self._upstream, args=(connection,), daemon=True),
                    threading.Thread(target=self._downstream, args=(connection,), daemon=True),
                ]
                with self._lock:
                    self._connections.append(connection)
                    self._threads = [t for t in self._threads if t.is_alive()] + pumps
                for pump in pumps:
                    pump.start()
        finally:
            self._listener.close()

    def _upstream(self, connection: _Connection) -> None:
        """Client to server; notes each request's first bytes."""
        line: bytearray | None = None  # the start of a request line being read
        began = 0.0
        try:
            while True:
                data = connection.client.recv(CHUNK)
                now = time.perf_counter()
                if not data:
                    break
                if connection.request_next:
                    connection.request_next = False
                    line, began = bytearray(), now
                if line is not None:
                    line += data[: LINE_MAX - len(line)]
                    end = line.find(b"\r\n")
                    if end >= 0 or len(line) >= LINE_MAX:
                        self._note(began, bytes(line[: end if end >= 0 else len(line)]))
                        line = None
                connection.server.sendall(data)
        except OSError:
            pass
        finally:
            connection.close()

    def _downstream(self, connection: _Connection) -> None:
        """Server to client; the client's next bytes open its next request."""
        try:
            while True:
                data = connection.server.recv(CHUNK)
                if not data:
                    break
                connection.request_next = True
                connection.client.sendall(data)
        except OSError:
            pass
        finally:
            connection.close()

    def _note(self, began: float, line: bytes) -> None:
        found = REQUEST_LINE.fullmatch(line)
        if found is None:
            return  # a body after "100 Continue", or not HTTP
        request = Request(began, found.group(1).decode("ascii"), found.group(2).decode("latin-1"))
        with self._lock:
            self._requests.append(request)


# --- the proxy in a process of its own ----------------------------------------------------
def _serve(control: Connection, target_port: int) -> None:
    with TimingProxy(target_port) as proxy:
        control.send(proxy.port)
        while True:
            command, value = control.recv()
            if command == "stop":
                return
            control.send([(r.at, r.method, r.target) for r in proxy.requests(int(value))])


class RemoteTimingProxy:
    """A :class:`TimingProxy` in a child process, so that its threads never wait for the
    caller's (the GIL); :meth:`requests` asks it over a pipe."""

    def __init__(self, target_port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, target_port), daemon=True)
        self.port = 0

    def __enter__(self) -> RemoteTimingProxy:
        self._process.start()
        if not self._control.poll(30):
            raise RuntimeError("the timing proxy did not start")
        self.port = int(self._control.recv())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self._control.send(("stop", None))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._control.close()

    def requests(self, since: int = 0) -> list[Request]:
        """The requests the proxy has seen, from the ``since``-th on."""
        self._control.send(("requests", since))
        return [Request(at, method, target) for at, method, target in self._control.recv()]
