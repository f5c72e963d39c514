"""A TCP proxy for tests that simulates a broker (or any server) going away.

Point a client at ``127.0.0.1:<proxy.port>``; bytes are forwarded to the target.
:meth:`TcpProxy.cut` drops every forwarded connection and turns new ones away until
:meth:`TcpProxy.restore`. Everything runs on one selector thread with non-blocking
sockets, so no per-connection thread can leak, and :meth:`TcpProxy.stop` closes every
socket the proxy owns.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import selectors
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

logger = logging.getLogger(__name__)

_CHUNK = 65536
# Stop reading from one side while this much is waiting for the other side to take it.
_MAX_BUFFER = 1 << 20
_COMMAND_TIMEOUT = 2.0

_Command = Literal["cut", "refresh", "stop"]


@dataclass
class _Pipe:
    """One direction of a forwarded connection."""

    src: socket.socket
    dst: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    eof: bool = False  # src sent FIN
    shut: bool = False  # we passed the FIN on to dst


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket
    connected: bool = False  # the non-blocking connect to the target finished
    up: _Pipe = field(init=False)  # client -> target
    down: _Pipe = field(init=False)  # target -> client

    def __post_init__(self) -> None:
        self.up = _Pipe(self.client, self.upstream)
        self.down = _Pipe(self.upstream, self.client)


class TcpProxy:
    """Forward connections from ``127.0.0.1:port`` to ``target_host:target_port``.

    ``port`` is known after :meth:`start`. ``connections`` counts the connections being
    forwarded now; ``accepted_total`` counts every accepted connection, including the
    ones turned away while cut; ``client_bytes`` counts what the clients sent.
    """

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._port: int | None = None
        self._refusing = False
        self._stalled = False
        self._connections = 0
        self._accepted_total = 0
        self._client_bytes = 0
        self._commands: queue.SimpleQueue[tuple[_Command, threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Owned by the selector thread once it runs.
        self._selector: selectors.DefaultSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._conns: set[_Conn] = set()
        self._events: dict[socket.socket, int] = {}

    @property
    def port(self) -> int:
        """The listening port on 127.0.0.1."""
        if self._port is None:
            raise RuntimeError("TcpProxy.port is only known after start()")
        return self._port

    @property
    def connections(self) -> int:
        """Connections being forwarded right now."""
        return self._connections

    @property
    def accepted_total(self) -> int:
        """Connections accepted since start, including those closed at once while cut."""
        return self._accepted_total

    @property
    def client_bytes(self) -> int:
        """Bytes the clients sent (to be forwarded to the target) since start."""
        return self._client_bytes

    def start(self) -> None:
        """Bind to a free port and start forwarding."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("a TcpProxy can be started once")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            listener.setblocking(False)
            wake_r, wake_w = socket.socketpair()
        except BaseException:
            listener.close()
            raise
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._listener, self._wake_r, self._wake_w = listener, wake_r, wake_w
        self._port = int(listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Close every forwarded connection (both sides) and turn new ones away.

        Returns once the connections are closed.
        """
        # Set before the loop closes the open connections, so none accepted in between
        # survives the cut.
        self._refusing = True
        self._send("cut")

    def stall(self) -> None:
        """Pass nothing more to the clients, their connections kept open, until restore()."""
        self._stalled = True
        self._send("refresh")

    def restore(self) -> None:
        """Forward new connections, and bytes to the clients, again."""
        self._refusing = False
        if self._stalled:
            self._stalled = False
            self._send("refresh")

    def stop(self) -> None:
        """Close every socket and join the thread. Stopping twice is harmless."""
        self._stopped = True
        thread = self._thread
        if thread is None:
            return
        self._send("stop")
        thread.join(timeout=_COMMAND_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("TcpProxy thread did not stop")
        self._thread = None

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- caller side ------------------------------------------------------------------

    def _send(self, command: _Command) -> None:
        thread, wake_w = self._thread, self._wake_w
        if thread is None or wake_w is None or not thread.is_alive():
            return
        done = threading.Event()
        self._commands.put((command, done))
        # A full wake-up pipe already wakes the loop; a closed one means it stopped.
        with contextlib.suppress(OSError):
            wake_w.send(b"\0")
        if not done.wait(_COMMAND_TIMEOUT) and thread.is_alive():
            raise RuntimeError(f"TcpProxy did not carry out {command!r}")

    # -- selector thread --------------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        running = True
        try:
            while running:
                for key, mask in self._selector.select():
                    sock = key.fileobj
                    if sock is self._wake_r:
                        running = self._handle_commands()
                        if not running:
                            break
                    elif sock is self._listener:
                        self._accept()
                    else:
                        conn = key.data
                        assert isinstance(conn, _Conn)
                        assert isinstance(sock, socket.socket)
                        if conn in self._conns:  # an earlier event may have closed it
                            self._service(conn, sock, mask)
        except Exception:
            logger.exception("TcpProxy loop failed")
        finally:
            self._close_all()

    def _handle_commands(self) -> bool:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        keep_running = True
        while True:
            try:
                command, done = self._commands.get_nowait()
            except queue.Empty:
                return keep_running
            if command == "cut":
                for conn in list(self._conns):
                    self._close_conn(conn)
            elif command == "refresh":
                for conn in list(self._conns):
                    self._update(conn)
            else:
                keep_running = False
                # Acknowledged after the loop has closed everything; see _close_all.
                self._commands.put((command, done))
                return keep_running
            done.set()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # e.g. EMFILE: leave the rest in the backlog rather than spin.
                logger.warning("TcpProxy accept failed: %s", exc)
                return
            self._accepted_total += 1
            if self._refusing:
                client.close()
                continue
            self._open_conn(client)

    def _open_conn(self, client: socket.socket) -> None:
        client.setblocking(False)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        for sock in (client, upstream):
            # AMQP frames are small; do not let Nagle hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = upstream.connect_ex((self.target_host, self.target_port))
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            client.close()
            upstream.close()
            return
        conn = _Conn(client, upstream, connected=err == 0)
        self._conns.add(conn)
        self._connections = len(self._conns)
        self._update(conn)

    def _service(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        try:
            if sock is conn.upstream and not conn.connected:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, errno.errorcode.get(err, "connect failed"))
                conn.connected = True
            else:
                if mask & selectors.EVENT_READ:
                    pipe = conn.up if sock is conn.client else conn.down
                    data = sock.recv(_CHUNK)
                    if data:
                        pipe.buf += data
                        if pipe is conn.up:
                            self._client_bytes += len(data)
                    else:
                        pipe.eof = True
                if mask & selectors.EVENT_WRITE:
                    pipe = conn.down if sock is conn.client else conn.up
                    if pipe.buf:
                        sent = sock.send(pipe.buf)
                        del pipe.buf[:sent]
            for pipe in (conn.up, conn.down):
                if pipe.eof and not pipe.buf and not pipe.shut and conn.connected:
                    pipe.dst.shutdown(socket.SHUT_WR)
                    pipe.shut = True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # Reset, refused, broken pipe: the connection is over for both sides.
            self._close_conn(conn)
            return
        if conn.up.shut and conn.down.shut:
            self._close_conn(conn)
        else:
            self._update(conn)

    def _update(self, conn: _Conn) -> None:
        """Register each socket of ``conn`` for exactly the events it can act on now."""
        read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
        client = 0
        if not conn.up.eof and len(conn.up.buf) < _MAX_BUFFER:
            client |= read
        if conn.down.buf and not self._stalled:
            client |= write
        if not conn.connected:
            upstream = write  # writable means the connect finished, one way or the other
        else:
            upstream = 0
            if not conn.down.eof and len(conn.down.buf) < _MAX_BUFFER:
                upstream |= read
            if conn.up.buf:
                upstream |= write
        self._set_events(conn.client, client, conn)
        self._set_events(conn.upstream, upstream, conn)

    def _set_events(self, sock: socket.socket, events: int, conn: _Conn) -> None:
        assert self._selector is not None
        old = self._events.get(sock, 0)
        if events == old:
            return
        if not events:
            self._selector.unregister(sock)
            del self._events[sock]
        elif not old:
            self._selector.register(sock, events, conn)
            self._events[sock] = events
        else:
            self._selector.modify(sock, events, conn)
            self._events[sock] = events

    def _close_conn(self, conn: _Conn) -> None:
        for sock in (conn.client, conn.upstream):
            self._set_events(sock, 0, conn)
            sock.close()
        self._conns.discard(conn)
        self._connections = len(self._conns)

    def _close_all(self) -> None:
        for conn in list(self._conns):
            self._close_conn(conn)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._selector is not None:
            self._selector.close()
        # Wake whoever waits for a command: the loop is gone.
        while True:
            try:
                _, done = self._commands.get_nowait()
            except queue.Empty:
                break
            done.set()
