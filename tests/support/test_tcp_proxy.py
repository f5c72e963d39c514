"""The test TCP proxy forwards both ways, cuts and restores, and leaves nothing behind."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

TIMEOUT = 5.0


class EchoServer:
    """A one-thread selector echo server on 127.0.0.1; ``close()`` joins it and closes every socket."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._clients: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._run, name="echo-server")
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                for key, _ in self._selector.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        return
                    if sock is self._listener:
                        client, _ = sock.accept()
                        self._clients.add(client)
                        self._selector.register(client, selectors.EVENT_READ)
                        continue
                    try:
                        data = sock.recv(65536)
                        if data:
                            # Echo data is small in these tests; a blocking send is fine.
                            sock.setblocking(True)
                            sock.sendall(data)
                            continue
                    except OSError:
                        pass
                    self._selector.unregister(sock)
                    self._clients.discard(sock)
                    sock.close()
        finally:
            for client in self._clients:
                client.close()
            self._selector.close()
            self._listener.close()
            self._wake_r.close()

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(TIMEOUT)
        self._wake_w.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo.port) as proxy:
        yield proxy


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def is_closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer closed or reset the connection (EOF or reset on read)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_for(condition: Callable[[], bool]) -> None:
    assert wait_until(condition, TIMEOUT, step=0.01), "condition not met in time"


def test_bytes_pass_both_ways(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"

        # Larger than any socket buffer, so back-pressure is exercised too.
        payload = bytes(range(256)) * 8192
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        try:
            assert recv_exactly(sock, len(payload)) == payload
        finally:
            sender.join(TIMEOUT)
        assert proxy.connections == 1
        assert proxy.accepted_total == 1
    wait_for(lambda: proxy.connections == 0)


def test_half_close_is_passed_on(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert recv_exactly(sock, 10) == b"last words"
        # The echo server closes after our FIN; the proxy passes its FIN back.
        assert sock.recv(1) == b""
    wait_for(lambda: proxy.connections == 0)


def test_cut_closes_open_connections_and_refuses_new_ones(proxy: TcpProxy) -> None:
    first, second = connect(proxy), connect(proxy)
    with first, second:
        for sock in (first, second):
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
        assert proxy.connections == 2

        proxy.cut()

        assert proxy.connections == 0
        assert is_closed_by_peer(first)
        assert is_closed_by_peer(second)

    with connect(proxy) as refused:
        assert is_closed_by_peer(refused)
    assert proxy.connections == 0
    assert proxy.accepted_total == 3


def test_restore_forwards_again(proxy: TcpProxy) -> None:
    proxy.cut()
    with connect(proxy) as refused:
        assert is_closed_by_peer(refused)

    proxy.restore()

    with connect(proxy) as sock:
        sock.sendall(b"back")
        assert recv_exactly(sock, 4) == b"back"
        assert proxy.connections == 1


def test_unreachable_target_closes_the_client() -> None:
    # Grab a free port and release it so nothing listens there.
    with socket.create_server(("127.0.0.1", 0)) as probe:
        dead_port = int(probe.getsockname()[1])
    with TcpProxy("127.0.0.1", dead_port) as proxy, connect(proxy) as sock:
        assert is_closed_by_peer(sock)
        wait_for(lambda: proxy.connections == 0)


def test_stop_is_prompt_and_leaves_nothing_behind(echo: EchoServer) -> None:
    # The autouse leak fixture checks threads and sockets after the test; this test
    # makes sure stop() closes live connections and the wake-up pair within a second.
    proxy = TcpProxy("127.0.0.1", echo.port)
    proxy.start()
    clients = [connect(proxy) for _ in range(3)]
    try:
        for sock in clients:
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"

        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 1.0

        assert not any(t.name == "tcp-proxy" for t in threading.enumerate())
        for sock in clients:
            assert is_closed_by_peer(sock)
        proxy.stop()  # twice is harmless
    finally:
        for sock in clients:
            sock.close()


def test_port_is_only_known_after_start() -> None:
    proxy = TcpProxy()
    with pytest.raises(RuntimeError):
        _ = proxy.port
    proxy.stop()  # never started: nothing to do
