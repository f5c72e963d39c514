"""One camera's HTTP connection: a GET at a time on a kept-alive connection.

Built on the standard library's ``http.client``, not ``requests``: a camera call is one
GET to a host we know, so what ``requests`` adds (proxies, cookies, redirects, netrc) is
unused or unwanted here, and it costs CPU on every snapshot. Measured on the 166 KB
snapshot, a GET costs about 0.55 ms of CPU through a ``requests`` session, 0.25 ms through
``urllib3`` and 0.15 ms here; with 32 cameras answering at once that is some 13 ms of
one core, under the GIL, between the first image and the last.

Errors come out as :class:`TransportError`, in our own words and raised outside any
``except`` block: ``http.client`` quotes the URL in some messages (``InvalidURL``), and a
Foscam or Reolink URL holds the password.
"""

from __future__ import annotations

import errno
import functools
import http.client
import io
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from snapshot_processor.camera.auth import Auth, BasicAuth

__all__ = ["Connection", "Reply", "TransportError"]

# A body of known length is read in as few calls as the socket allows (each read gives
# up the GIL and must win it back, which with many cameras answering at once is the
# cost), up to this much at a time; one of unknown length, in smaller pieces.
_READ_MAX = 1024 * 1024
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """A camera's complete answer."""

    status: int
    content_type: str
    body: bytes = field(repr=False)


class TransportError(Exception):
    """A GET that got no complete answer. The message is ours: no URL, no credentials."""

    def __init__(
        self,
        problem: str,
        *,
        timed_out: bool = False,
        too_large: bool = False,
        lasting: bool = False,
    ) -> None:
        super().__init__(problem)
        self.timed_out = timed_out
        self.too_large = too_large
        # Another attempt cannot help (an untrusted certificate): not retried.
        self.lasting = lasting


@dataclass(frozen=True)
class _Target:
    secure: bool
    host: str
    port: int
    path: str = field(repr=False)
    basic: BasicAuth | None = field(repr=False)  # from user:password@ in the URL

    @classmethod
    def of(cls, url: str) -> _Target:
        problem = None
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            problem = "the camera's URL does not parse"
        if problem is not None:
            raise TransportError(problem)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError("the camera's URL is not an http(s) URL with a host")
        secure = parts.scheme == "https"
        basic = None
        if parts.username is not None:
            # As requests did: credentials in the URL are basic auth when the camera's
            # auth mode sends none of its own (never before a digest challenge).
            basic = BasicAuth(unquote(parts.username), unquote(parts.password or ""))
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Spaces and other characters a request line cannot hold are escaped, as requests
        # did; what is escaped already stays as it is ("%" is kept).
        path = quote(path, safe="!#$%&'()*+,/:;=?@[]~")
        return cls(secure, parts.hostname, port or (443 if secure else 80), path, basic)


def _describe(exc: BaseException) -> str:
    """The network problem in plain words, from the exception's type (never its text)."""
    chain = [exc]
    for _ in range(8):
        linked = chain[-1].__cause__ or chain[-1].__context__
        if linked is None or linked in chain:
            break
        chain.append(linked)
    kinds: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
        (ConnectionRefusedError, "connection refused"),
        (socket.gaierror, "host name does not resolve"),
        (ssl.SSLCertVerificationError, "TLS certificate not trusted"),
        ((ssl.SSLEOFError, ssl.SSLZeroReturnError), "connection closed by the camera"),
        (ssl.SSLError, "TLS handshake failed"),
        (ConnectionResetError, "connection reset by the camera"),
        (
            (http.client.RemoteDisconnected, http.client.IncompleteRead, BrokenPipeError),
            "connection closed by the camera",
        ),
    )
    for types, words in kinds:
        if any(isinstance(item, types) for item in chain):
            return words
    for item in chain:
        if isinstance(item, OSError) and item.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "host unreachable"
    return f"connection failed ({type(exc).__name__})"


class _DeadlineError(Exception):
    """The whole answer took longer than the timeout."""


class _TooLargeError(Exception):
    """The answer is larger than the limit."""


# A kept-alive connection the camera closed while idle fails before any answer arrives;
# such a GET is sent once more on a new connection (GET is safe to repeat).
_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


def _kernel_timeout(sock: socket.socket, option: int, seconds: float) -> None:
    """Bound ``sock``'s blocking sends or receives (``SO_SNDTIMEO``, ``SO_RCVTIMEO``) in
    the kernel, and make it blocking.

    Python's own socket timeout waits in ``poll()`` before each send and receive: two
    system calls, each of which its thread gives up the GIL for and must win back. With
    32 cameras answering at once, dropping the ``poll()`` cut the daemon's context
    switches by about a sixth (1,800 to 1,450-1,550 per burst). A
    receive that times out fails with ``EAGAIN`` (:class:`BlockingIOError`). TLS sockets
    keep Python's timeouts: OpenSSL would read that as "try again".
    """
    if sock.gettimeout() is not None:
        sock.settimeout(None)
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    if whole <= 0 and micro <= 0:
        whole, micro = 0, 1  # zero would mean no bound at all
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("@ll", whole, micro))


def _connector(addresses: tuple[str, ...]) -> Callable[..., socket.socket]:
    """``socket.create_connection`` that goes to ``addresses`` (the first that answers)
    whatever host it is given: the host name stays in the Host header and TLS checks,
    and is not looked up."""

    def connect(
        where: tuple[str, int], timeout: float | None = None, source: tuple[str, int] | None = None
    ) -> socket.socket:
        failure = OSError("no address to connect to")
        for address in addresses:
            try:
                return socket.create_connection((address, where[1]), timeout, source)
            except OSError as exc:
                failure = exc
        raise failure

    return connect


class _Plain(http.client.HTTPConnection):
    """A plain HTTP connection whose socket's timeouts are kept by the kernel."""

    def __init__(self, host: str, port: int, *, timeout: float, addresses: tuple[str, ...]) -> None:
        super().__init__(host, port, timeout=timeout)
        if addresses:
            self._create_connection = _connector(addresses)

    def connect(self) -> None:
        super().connect()  # connecting is bounded by Python's timeout, as before
        assert self.sock is not None
        assert self.timeout is not None
        _kernel_timeout(self.sock, socket.SO_SNDTIMEO, self.timeout)


class _Secure(http.client.HTTPSConnection):
    """An HTTPS connection, to ``addresses`` when there are any."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        context: ssl.SSLContext,
        addresses: tuple[str, ...],
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        if addresses:
            self._create_connection = _connector(addresses)


class _DeadlineReader(io.RawIOBase):
    """The socket as http.client reads it, each read bounded by what is left of the
    deadline: the status line, headers, chunk sizes and body all together, so a camera
    trickling any of them does not hold a thread past its timeout."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        super().__init__()
        # As http.client's own reader: holds the socket open while the answer is read.
        self._raw = sock.makefile("rb", buffering=0)
        self._sock = sock
        self._deadline = deadline
        self._timeout = timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int | None:  # type: ignore[override]
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _DeadlineError
        wait = min(self._timeout, left)
        if isinstance(self._sock, ssl.SSLSocket):
            self._sock.settimeout(wait)
            return self._raw.readinto(buffer)
        _kernel_timeout(self._sock, socket.SO_RCVTIMEO, wait)
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:
            raise TimeoutError from None

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Response(http.client.HTTPResponse):
    """An answer read through a :class:`_DeadlineReader`."""

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
        *,
        deadline: float,
        timeout: float,
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        self.fp.close()
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline, timeout))


class Connection:
    """A kept-alive HTTP(S) connection to one camera, used one GET at a time.

    ``timeout`` bounds connecting and each read, and also the whole answer (status line,
    headers and body): a camera trickling bytes does not hold a thread for longer. Not thread-safe: the client's lock
    makes calls one at a time. With ``pinned`` (host, addresses), a URL naming that host
    connects to those addresses without looking the host up.
    """

    def __init__(
        self,
        *,
        timeout: float,
        verify_tls: bool,
        user_agent: str,
        limit: int,
        pinned: tuple[str, tuple[str, ...]] | None = None,
    ) -> None:
        self._timeout = timeout
        # (host, addresses): a URL naming that host is reached at those addresses, checked
        # against CAMERA_NETWORKS; a second lookup could answer otherwise (DNS rebinding).
        self._pinned = None if pinned is None else (pinned[0].lower(), pinned[1])
        self._verify_tls = verify_tls
        self._user_agent = user_agent
        self._limit = limit
        self._http: http.client.HTTPConnection | None = None
        self._key: tuple[bool, str, int] | None = None
        self._context: ssl.SSLContext | None = None
        # Whether this GET went out on a connection kept from an earlier one, and whether
        # an answer to it has begun: a reused connection failing before any answer was
        # closed by the camera while idle.
        self._reused = False
        self._answered = False

    def get(self, url: str, auth: Auth) -> Reply:
        """GET ``url`` and read the whole answer; a 401 with a digest challenge is
        answered once. Raises :class:`TransportError`."""
        deadline = time.monotonic() + self._timeout
        target = _Target.of(url)
        if not auth.sends_credentials and target.basic is not None:
            auth = target.basic
        for first in (True, False):
            reply, challenges = self._exchange(target, auth, deadline)
            if reply.status == 401 and first and auth.challenged(challenges):
                continue
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the connection (the next GET opens a new one)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    # --- machinery --------------------------------------------------------------------
    def _exchange(self, target: _Target, auth: Auth, deadline: float) -> tuple[Reply, list[str]]:
        problem: TransportError
        try:
            try:
                return self._round_trip(target, auth, deadline)
            except _STALE:
                if not self._reused or self._answered:
                    raise
            self.close()
            return self._round_trip(target, auth, deadline)  # a new answer: a new nonce count
        except (_DeadlineError, TimeoutError, BlockingIOError):  # the last: SO_SNDTIMEO
            problem = TransportError("timed out", timed_out=True)
        except _TooLargeError:
            problem = TransportError(f"answer larger than {self._limit} bytes", too_large=True)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            problem = TransportError(
                _describe(exc), lasting=isinstance(exc, ssl.SSLCertVerificationError)
            )
        except BaseException:
            self.close()  # half a request or answer on it: never reused
            raise
        self.close()  # in an unknown state: never reused
        raise problem

    def _round_trip(self, target: _Target, auth: Auth, deadline: float) -> tuple[Reply, list[str]]:
        self._answered = False
        connection = self._connection(target, deadline)
        headers = {"User-Agent": self._user_agent, "Accept": "*/*"}
        authorization = auth.header("GET", target.path)
        if authorization is not None:
            headers["Authorization"] = authorization
        connection.response_class = functools.partial(  # type: ignore[assignment]
            _Response, deadline=deadline, timeout=self._timeout
        )
        connection.request("GET", target.path, headers=headers)
        response = connection.getresponse()
        self._answered = True
        try:
            length = response.length
            if length is not None and length > self._limit:
                raise _TooLargeError
            chunks: list[bytes] = []
            size = 0
            while True:
                want = min(response.length, _READ_MAX) if response.length else _CHUNK_BYTES
                chunk = response.read1(want)
                if not chunk:
                    break
                size += len(chunk)
                if size > self._limit:
                    raise _TooLargeError
                chunks.append(chunk)
            if response.length:  # a body cut short (read1 reports no IncompleteRead)
                raise http.client.IncompleteRead(b"", response.length)
        finally:
            response.close()  # a whole answer read: the connection stays for the next GET
        content_type = response.getheader("Content-Type", "") or ""
        challenges = response.headers.get_all("WWW-Authenticate") or []
        return Reply(response.status, content_type, b"".join(chunks)), challenges

    def _connection(self, target: _Target, deadline: float) -> http.client.HTTPConnection:
        key = (target.secure, target.host, target.port)
        connection = self._http
        if connection is not None and (key != self._key or _dropped(connection.sock)):
            self.close()
            connection = None
        timeout = max(0.001, min(self._timeout, deadline - time.monotonic()))
        if connection is None:
            self._reused = False
            pinned = self._pinned
            addresses = pinned[1] if pinned is not None and pinned[0] == target.host else ()
            if target.secure:
                connection = _Secure(
                    target.host,
                    target.port,
                    timeout=timeout,
                    context=self._tls(),
                    addresses=addresses,
                )
            else:
                connection = _Plain(target.host, target.port, timeout=timeout, addresses=addresses)
            self._http, self._key = connection, key
            return connection
        self._reused = connection.sock is not None
        if isinstance(connection.sock, ssl.SSLSocket):
            connection.sock.settimeout(timeout)
        elif connection.sock is not None:
            _kernel_timeout(connection.sock, socket.SO_SNDTIMEO, timeout)
        else:
            connection.timeout = timeout  # closed after the last answer: reopens
        return connection

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            context = ssl.create_default_context()
            if not self._verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._context = context
        return self._context


def _dropped(sock: socket.socket | None) -> bool:
    """Whether an idle kept-alive socket was closed by the camera (it reads as ready: an
    end of file, or bytes nobody asked for)."""
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
