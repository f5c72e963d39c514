"""One camera's HTTP: a ``requests`` session, a GET at a time, bounded in time and size.

Beyond requests: a deadline for the whole answer (``timeout=`` bounds each socket
operation only), a size limit, ``CAMERA_NETWORKS``' pinning, and errors in our own words
raised outside any ``except`` (requests' messages quote the URL, which may hold a password)."""

from __future__ import annotations

import errno
import functools
import http.client
import io
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth, HTTPDigestAuth
from requests.utils import parse_dict_header
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import create_connection

from pylib.observe.logs import RedactingFilter

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "MAX_ANSWER_BYTES",
    "CameraSession",
    "Reply",
    "TransportError",
    "basic_auth",
    "digest_auth",
]

MAX_ANSWER_BYTES = 32 * 1024 * 1024  # a snapshot is a few hundred kB
_CHUNK_BYTES = 1024 * 1024

# urllib3 logs request lines and URLs, and a Foscam or Reolink URL holds the password.
for _name in ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(RedactingFilter())


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
        self.lasting = lasting  # another attempt cannot help (an untrusted certificate)


def basic_auth(user: str, password: str) -> AuthBase:
    """``Authorization: Basic`` in UTF-8 (RFC 7617; requests would encode a str as Latin-1)."""
    return HTTPBasicAuth(user.encode(), password.encode())


def digest_auth(user: str, password: str) -> AuthBase:
    """HTTP digest auth: a thread's later snapshots answer its kept challenge at once."""
    return _DigestAuth(user, password)


_ALGORITHMS = ("SHA-256", "MD5", "MD5-SESS")  # answered best first (RFC 7616, 3.7)
# A camera's challenge is a few hundred bytes; more is not read (nor parsed).
_MAX_CHALLENGES = 8
_MAX_CHALLENGE_LENGTH = 4096


def _best_challenge(values: list[str]) -> str | None:
    """The digest challenge to answer among ``WWW-Authenticate`` values, or None."""
    best: tuple[int, str] | None = None
    for value in values[:_MAX_CHALLENGES]:
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() != "digest" or len(value) > _MAX_CHALLENGE_LENGTH:
            continue
        params: dict[str, str] = parse_dict_header(rest)  # type: ignore[no-untyped-call]
        algorithm = (params.get("algorithm") or "MD5").upper()
        qop = params.get("qop")
        offers_auth = qop is None or "auth" in (item.strip().lower() for item in qop.split(","))
        if (
            "realm" not in params
            or "nonce" not in params
            or algorithm not in _ALGORITHMS
            or not offers_auth  # auth-int alone would need the body hashed
            or (qop is None and algorithm.endswith("-SESS"))  # needs a cnonce, sent with qop
        ):
            continue
        rank = _ALGORITHMS.index(algorithm)
        if best is None or rank < best[0]:
            best = (rank, value)
    return None if best is None else best[1]


class _DigestAuth(HTTPDigestAuth):
    """requests' digest auth answering only the best challenge, the 401's body read in limits."""

    def handle_401(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        if r.status_code != 401:
            return r
        challenge = _best_challenge(r.raw.headers.getlist("WWW-Authenticate"))
        if challenge is None:
            return r  # nothing we can answer: the 401 stands
        r.headers["WWW-Authenticate"] = challenge
        _read_body(r)
        return super().handle_401(r, **kwargs)  # type: ignore[no-any-return,no-untyped-call]

    def build_digest_header(self, method: str, url: str) -> str | None:
        # The challenge offers "auth"; requests misses it after a space ("auth-int, auth").
        challenge = self._thread_local.chal  # type: ignore[attr-defined]  # not in the stubs
        if challenge.get("qop"):
            challenge["qop"] = "auth"
        return super().build_digest_header(method, url)  # type: ignore[no-any-return,no-untyped-call]


class _Clock:
    """The deadline of the GET under way (a session makes one at a time)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._deadline = 0.0

    def start(self) -> None:
        self._deadline = time.monotonic() + self.timeout

    def left(self) -> float:
        """How long the next connect, send or read may wait."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer took longer than the timeout")
        return left


class _DeadlineIO(socket.SocketIO):
    """The socket as http.client reads an answer, each read bounded by the deadline."""

    def __init__(self, sock: socket.socket, clock: _Clock) -> None:
        super().__init__(sock, "rb")
        self._socket = sock
        self._clock = clock

    def readinto(self, b: WriteableBuffer) -> int | None:
        self._socket.settimeout(self._clock.left())
        return super().readinto(b)


class _Response(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, clock: _Clock, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()
        self.fp = io.BufferedReader(_DeadlineIO(sock, clock))


_Pinned = tuple[str, tuple[str, ...]]


class _Connection(HTTPConnection):
    """urllib3's connection, bounded by the clock, connecting to its host's pinned addresses."""

    def __init__(self, *args: Any, clock: _Clock, pinned: _Pinned | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock
        self._addresses = pinned[1] if pinned is not None and pinned[0] == self.host else ()
        self.response_class = functools.partial(_Response, clock=clock)  # type: ignore[assignment]

    def _new_conn(self) -> socket.socket:
        self.timeout = self._clock.left()
        if not self._addresses:
            return super()._new_conn()
        # The host name is not looked up again: a second answer could differ.
        failure: OSError = OSError("no address to connect to")
        for address in self._addresses:
            try:
                return create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:
                failure = exc
        if isinstance(failure, TimeoutError):
            raise ConnectTimeoutError(self, "connect timed out") from failure
        raise NewConnectionError(self, "connect failed") from failure

    def send(self, data: Any) -> None:
        if self.sock is not None:
            self.sock.settimeout(self._clock.left())
        super().send(data)


class _TLSConnection(_Connection, HTTPSConnection):
    """The same over TLS: SNI and the certificate's check use the host name."""


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter with our connections, and TLS from the system's trust store."""

    def __init__(self, clock: _Clock, pinned: _Pinned | None, verify_tls: bool) -> None:
        self._clock = clock
        self._pinned = pinned
        self._verify_tls = verify_tls
        self._tls: ssl.SSLContext | None = None
        super().__init__(pool_connections=1, pool_maxsize=1)  # one GET at a time

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": functools.partial(_Pool, clock=self._clock, pinned=self._pinned),
            "https": self._tls_pool,
        }

    def _tls_pool(self, host: str, port: int | None, **options: Any) -> _TLSPool:
        if self._tls is None:  # lazily: a plain-HTTP camera need not load the trust store
            self._tls = ssl.create_default_context()
            if not self._verify_tls:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        options["ssl_context"] = self._tls
        return _TLSPool(host, port, clock=self._clock, pinned=self._pinned, **options)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        conn.cert_reqs = "CERT_REQUIRED" if verify else "CERT_NONE"


class _TooLargeError(Exception):
    """The answer is larger than the limit."""


def _read_body(response: requests.Response) -> bytes:
    """The whole body as it came, or :class:`_TooLargeError`; closes the connection on failure."""
    try:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > MAX_ANSWER_BYTES:
            raise _TooLargeError
        chunks: list[bytes] = []
        size = 0
        for chunk in response.raw.stream(_CHUNK_BYTES, decode_content=False):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _TooLargeError
            chunks.append(chunk)
    except BaseException:
        response.close()
        raise
    return b"".join(chunks)


# Only what a request line cannot hold is escaped (requests would decode %41, drop dot segments).
_SAFE_IN_TARGET = "!#$%&'()*+,/:;=?@[]~"


class CameraSession:
    """HTTP(S) to one camera, a GET at a time; ``timeout`` bounds the whole answer. With
    ``pinned`` (host, addresses), that host is connected to at those, never looked up."""

    def __init__(
        self,
        *,
        timeout: float,
        verify_tls: bool,
        user_agent: str,
        pinned: _Pinned | None = None,
    ) -> None:
        self._clock = _Clock(timeout)
        session = requests.Session()
        session.trust_env = False  # no proxy (it would see URL passwords), no ~/.netrc auth
        session.verify = verify_tls
        # (host, addresses) checked against CAMERA_NETWORKS; the host as urllib3 has it.
        pinned = None if pinned is None else (pinned[0].lower(), pinned[1])
        adapter = _Adapter(self._clock, pinned, verify_tls)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        # The size limit counts the bytes as they come; a JPEG gains nothing compressed.
        self._headers = {"User-Agent": user_agent, "Accept": "*/*", "Accept-Encoding": "identity"}

    def get(self, url: str, auth: AuthBase | None) -> Reply:
        """GET ``url`` and read the whole answer (a digest 401 answered once); raises
        :class:`TransportError`."""
        self._clock.start()
        try:
            response = self._session.send(
                self._prepare(url, auth),
                stream=True,
                allow_redirects=False,
                timeout=self._clock.timeout,
            )
            body = _read_body(response)
        except _TooLargeError:
            problem = TransportError(f"answer larger than {MAX_ANSWER_BYTES} bytes", too_large=True)
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
            ValueError,
        ) as exc:
            problem = _problem(exc)
        else:
            return Reply(response.status_code, response.headers.get("Content-Type", ""), body)
        raise problem

    def close(self) -> None:
        """Close the kept-alive connections (the next GET opens a new one)."""
        self._session.close()

    def _prepare(self, url: str, auth: AuthBase | None) -> requests.PreparedRequest:
        parts = urlsplit(url)
        if auth is None and parts.username is not None:
            # Credentials in the URL are basic auth when the auth mode sends none of its own.
            auth = basic_auth(unquote(parts.username), unquote(parts.password or ""))
        origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        target = quote(
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), _SAFE_IN_TARGET
        )
        # Prepared alone: no session state to merge, and merging would double a GET's CPU.
        prepared = requests.Request("GET", origin + target, headers=self._headers).prepare()
        normalized = urlsplit(prepared.url or "")
        prepared.url = f"{normalized.scheme}://{normalized.netloc}{target}"
        prepared.prepare_auth(auth)
        return prepared


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: causes, contexts, urllib3's reasons, requests' args."""
    found = [exc]
    for item in found:
        linked = [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
        for other in linked:
            if isinstance(other, BaseException) and other not in found and len(found) < 16:
                found.append(other)
    return found


_WORDS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    ((socket.gaierror, NameResolutionError), "host name does not resolve"),
    (ssl.SSLCertVerificationError, "TLS certificate not trusted"),
    ((ssl.SSLEOFError, ssl.SSLZeroReturnError), "connection closed by the camera"),
    (ssl.SSLError, "TLS handshake failed"),
    (ConnectionResetError, "connection reset by the camera"),
    (
        (http.client.RemoteDisconnected, http.client.IncompleteRead, BrokenPipeError),
        "connection closed by the camera",
    ),
    (
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
            urllib3.exceptions.LocationValueError,
            UnicodeError,  # a host name IDNA cannot encode
        ),
        "the camera's URL is not an http(s) URL with a host",
    ),
)


def _problem(exc: BaseException) -> TransportError:
    """The network problem in plain words, from the exceptions' types (never their text)."""
    chain = _chain(exc)
    # The socket's own (urllib3's NewConnectionError is one of its TimeoutErrors).
    if any(isinstance(item, TimeoutError) for item in chain):
        return TransportError("timed out", timed_out=True)
    for types, words in _WORDS:
        if any(isinstance(item, types) for item in chain):
            return TransportError(words, lasting=types is ssl.SSLCertVerificationError)
    for item in chain:
        if isinstance(item, OSError) and item.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return TransportError("host unreachable")
    return TransportError(f"connection failed ({type(exc).__name__})")
