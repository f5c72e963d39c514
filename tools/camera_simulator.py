"""A camera simulator: a real HTTP server that speaks every supported vendor's snapshot API.

One server answers all vendors at once, each on its own path and with its own auth:

==========  ==============================================  ==============================
vendor      path                                            auth
==========  ==============================================  ==============================
foscam      ``/cgi-bin/CGIProxy.fcgi?cmd=snapPicture2``      ``usr``/``pwd`` in the query
hikvision   ``/ISAPI/Streaming/channels/101/picture``       HTTP Digest (MD5, qop=auth)
dahua       ``/cgi-bin/snapshot.cgi?channel=1``             HTTP Digest (MD5, qop=auth)
reolink     ``/cgi-bin/api.cgi?cmd=Snap&channel=0``         ``user``/``password`` in query
generic     ``/snapshot.jpg``                               basic, digest or none
==========  ==============================================  ==============================

Each vendor's cheap status call, which the camera prober uses, is answered too, with the
same auth: foscam ``CGIProxy.fcgi?cmd=getDevState``, hikvision ``/ISAPI/System/deviceInfo``,
dahua ``/cgi-bin/magicBox.cgi?action=getSystemInfo``, reolink ``api.cgi?cmd=GetDevInfo``
(the generic camera has none). ``status_requests`` counts them.

Queries are decoded the way the firmware does: ``%XX`` only, so a ``+`` stays a plus.
Failure modes, settable while running: ``ok``, ``error`` (the vendor's own error format,
HTTP 500 where it has none), ``unavailable`` (HTTP 503), ``html`` (200 with an HTML error
page), ``garbage`` (200 with random bytes), ``truncated`` (200 with half a JPEG),
``hang`` (no answer until :meth:`CameraSimulator.stop`), and ``jpeg500``/``jpeg404``
(a whole, valid JPEG sent with HTTP 500 or 404: firmware that reports an error in the
status alone, which a client must refuse). :meth:`CameraSimulator.fail_next`
fails only the next N authenticated requests. Run it by hand with
``python -m tools.camera_simulator --port 8088``; with ``--rtsp`` an RTSP camera
(``tools/rtsp_camera.py``, GStreamer's server) serves an H.264 stream beside it, with the
same user and password.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import io
import itertools
import json
import logging
import os
import queue
import re
import secrets
import selectors
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import unquote_to_bytes

from PIL import Image, ImageDraw, ImageFont

from tools.rtsp_camera import RtspServer, why_unavailable

__all__ = ["DESCRIPTION", "MODES", "PATHS", "CameraSimulator", "add_arguments", "main", "serve"]

DESCRIPTION = (
    "Fake IP camera serving Foscam, Hikvision, Dahua, Reolink and generic snapshot "
    "endpoints, and their status calls."
)

log = logging.getLogger(__name__)

MODES = (
    "ok",
    "error",
    "unavailable",
    "html",
    "garbage",
    "truncated",
    "hang",
    "jpeg500",
    "jpeg404",
)
# Modes that send a valid JPEG under an error status.
_JPEG_ERROR_STATUS = {"jpeg500": 500, "jpeg404": 404}
GENERIC_AUTH_MODES = ("basic", "digest", "none")
RTSP_SIZE = (1280, 720)  # the --rtsp stream's picture

PATHS: dict[str, str] = {
    "foscam": "/cgi-bin/CGIProxy.fcgi",
    "hikvision": "/ISAPI/Streaming/channels/101/picture",
    "dahua": "/cgi-bin/snapshot.cgi",
    "reolink": "/cgi-bin/api.cgi",
    "generic": "/snapshot.jpg",
}
_VENDOR_BY_PATH = {path: vendor for vendor, path in PATHS.items()}
# Status calls on paths of their own (Foscam and Reolink use their snapshot path's CGI).
STATUS_PATHS: dict[str, str] = {
    "hikvision": "/ISAPI/System/deviceInfo",
    "dahua": "/cgi-bin/magicBox.cgi",
}
_VENDOR_BY_STATUS_PATH = {path: vendor for vendor, path in STATUS_PATHS.items()}

# Nonces remembered for digest auth; older ones are answered with stale=true.
_MAX_NONCES = 1024
_DIGEST_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_QUERY_SECRET = re.compile(r"(?i)([?&](?:pwd|password)=)[^&\s\"']*")

_HTML_ERROR = (
    b"<!DOCTYPE html><html><head><title>Error</title></head>"
    b"<body><h1>500 Internal Error</h1><p>Snapshot unavailable.</p></body></html>"
)


def _decode_query(query: str) -> dict[str, str]:
    """Decode a query the way camera firmware does: ``%XX`` escapes only, ``+`` is a plus."""
    params: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        params[unquote_to_bytes(key).decode("utf-8", "replace")] = unquote_to_bytes(value).decode(
            "utf-8", "replace"
        )
    return params


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _parse_digest(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "digest":
        return {}
    params: dict[str, str] = {}
    for match in _DIGEST_PARAM.finditer(rest):
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
    return params


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that stops at once and leaves no thread or socket behind.

    ``ThreadingHTTPServer`` does not track daemon handler threads, a keep-alive connection
    keeps its thread blocked in a read, and ``serve_forever`` notices ``shutdown()`` only
    at its next poll. This one tracks its connections and wakes its loop through a pipe.

    Handler threads are kept when their connection ends and take the next one; with
    ``spare_threads``, that many wait from the start. One server stands in for many
    cameras, each of which accepts its own connections: starting a thread per connection
    in the one accept loop (``Thread.start`` waits until the thread runs) held the last
    of 31 new connections in a burst some 10 ms behind the first, a delay no camera of
    its own would add to the benchmark's first burst.
    """

    daemon_threads = True
    block_on_close = False
    # One server stands in for many cameras (each a host of its own): socketserver's
    # backlog of 5 would drop the SYNs of a burst, and the clients retry after 1 s.
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], simulator: CameraSimulator, spare_threads: int = 0
    ) -> None:
        self.simulator = simulator
        self._conn_lock = threading.Lock()
        self._open: dict[threading.Thread, socket.socket] = {}
        self._handlers: list[threading.Thread] = []
        self._idle = 0  # handler threads waiting for a connection (or about to)
        self._closing = False
        self._handoff: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._conn_ids = itertools.count(1)
        self._quit = threading.Event()
        self._wake_reader, self._wake_writer = socket.socketpair()
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._wake_reader.close()
            self._wake_writer.close()
            raise
        for _ in range(spare_threads):
            self._start_handler(None)

    def serve(self) -> None:
        """Accept connections until :meth:`wake_and_quit`; each gets a handler thread."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._quit.is_set():
                for key, _events in selector.select():
                    if key.fileobj is self.socket and not self._quit.is_set():
                        self._accept()

    def _accept(self) -> None:
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            log.debug("camera simulator: cannot serve %s", client_address, exc_info=True)
            self.shutdown_request(request)

    def wake_and_quit(self) -> None:
        """Make :meth:`serve` return now."""
        self._quit.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.simulator._count_connection()
        with self._conn_lock:
            if self._idle > 0:
                self._idle -= 1
                self._handoff.put((request, client_address))
                return
        self._start_handler((request, client_address))

    def _start_handler(self, first: tuple[Any, Any] | None) -> None:
        thread = threading.Thread(
            target=self._handle_connections,
            args=(first,),
            name=f"camera-simulator-conn-{next(self._conn_ids)}",
            daemon=True,
        )
        with self._conn_lock:
            self._handlers.append(thread)
            if first is None:
                self._idle += 1
        thread.start()

    def _handle_connections(self, first: tuple[Any, Any] | None) -> None:
        """Serve ``first``, then each connection handed over, until the server closes."""
        item = first
        while True:
            if item is None:
                item = self._handoff.get()
                if item is None:
                    return
            request, client_address = item
            with self._conn_lock:
                if self._closing:  # handed over as the server closed: not served
                    self.shutdown_request(request)
                    return
                self._open[threading.current_thread()] = request
            try:
                self.finish_request(request, client_address)
            except Exception:
                # A client that timed out and hung up is normal here, not worth a traceback.
                log.debug("camera simulator: error serving %s", client_address, exc_info=True)
            finally:
                self.shutdown_request(request)
                with self._conn_lock:
                    self._open.pop(threading.current_thread(), None)
            with self._conn_lock:
                if self._closing:
                    return
                self._idle += 1
            item = None

    def close_connections(self, timeout: float) -> None:
        """Unblock every handler (shut its socket down), end every thread and wait for it."""
        with self._conn_lock:
            self._closing = True
            open_now = list(self._open.values())
            threads = list(self._handlers)
        for sock in open_now:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)
        for _ in threads:
            self._handoff.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    """Hands each GET to the simulator; logs without the query (it holds passwords)."""

    protocol_version = "HTTP/1.1"
    server_version = "CameraSimulator/1.0"
    sys_version = ""
    # Idle keep-alive connections end after this long even if nobody stops the server.
    timeout = 30.0
    # Headers and body go out in separate writes; with Nagle on, the body waits for the
    # client's delayed ACK (40 ms per request).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        server.simulator._handle(self)

    def reply(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Send a complete response with a Content-Length (keep-alive stays usable)."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            # The client gave up (timed out) before the answer: nothing to tell it.
            self.close_connection = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("camera simulator: %s %s -> %s", self.command, self.path.partition("?")[0], code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("camera simulator: %s", _QUERY_SECRET.sub(r"\1***", format % args))


class CameraSimulator:
    """A fake IP camera for tests and demos: a real HTTP server on 127.0.0.1.

    Settings (``user``, ``password``, ``mode``, ``latency``, ``generic_auth``) can be
    changed from any thread while it runs. ``requests`` counts every HTTP request
    (digest challenges included), ``served`` the whole JPEGs sent, ``connections`` the
    TCP connections accepted. ``spare_threads`` handler threads start with it, so that
    many new connections at once are served without starting one.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "admin",
        password: str = "secret",
        mode: str = "ok",
        latency: float = 0.0,
        generic_auth: str = "digest",
        name: str = "simulated camera",
        size: tuple[int, int] = (640, 480),
        realm: str = "IP Camera",
        image: bytes | None = None,
        spare_threads: int = 0,
    ) -> None:
        self.host = host
        self.spare_threads = spare_threads
        self.port = port
        self.name = name
        self.realm = realm
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._user = user
        self._password = password
        self._mode = self._check_mode(mode)
        self._latency = self._check_latency(latency)
        self._generic_auth = self._check_generic_auth(generic_auth)
        self._fail_count = 0
        self._fail_mode = "unavailable"
        self._requests = 0
        self._served = 0
        self._status_requests = 0
        self._connections = 0
        self._nonces: OrderedDict[str, None] = OrderedDict()
        # A fixed image is served as it is (the benchmark's camera: no encoding per request).
        self._image = image
        self._background = self._make_background(size)
        self._font = self._load_font()
        # One font object serves every handler thread; FreeType faces are not thread-safe.
        self._render_lock = threading.Lock()

    # -- settings --------------------------------------------------------------------

    @staticmethod
    def _check_mode(mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"unknown simulator mode {mode!r}; expected one of {MODES}")
        return mode

    @staticmethod
    def _check_latency(latency: float) -> float:
        if latency < 0:
            raise ValueError("latency must not be negative")
        return float(latency)

    @staticmethod
    def _check_generic_auth(auth: str) -> str:
        if auth not in GENERIC_AUTH_MODES:
            raise ValueError(f"unknown generic auth {auth!r}; expected one of {GENERIC_AUTH_MODES}")
        return auth

    @property
    def user(self) -> str:
        """The user name every vendor endpoint accepts."""
        with self._lock:
            return self._user

    @user.setter
    def user(self, value: str) -> None:
        with self._lock:
            self._user = value

    @property
    def password(self) -> str:
        """The password every vendor endpoint accepts."""
        with self._lock:
            return self._password

    @password.setter
    def password(self, value: str) -> None:
        with self._lock:
            self._password = value

    @property
    def mode(self) -> str:
        """How authenticated snapshot requests are answered (one of :data:`MODES`)."""
        with self._lock:
            return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        value = self._check_mode(value)
        with self._lock:
            self._mode = value

    @property
    def latency(self) -> float:
        """Seconds to wait before answering each request."""
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        value = self._check_latency(value)
        with self._lock:
            self._latency = value

    @property
    def generic_auth(self) -> str:
        """Auth on the generic ``/snapshot.jpg`` path: basic, digest or none."""
        with self._lock:
            return self._generic_auth

    @generic_auth.setter
    def generic_auth(self, value: str) -> None:
        value = self._check_generic_auth(value)
        with self._lock:
            self._generic_auth = value

    def fail_next(self, count: int, mode: str = "unavailable") -> None:
        """Answer the next ``count`` authenticated requests in ``mode``, then use :attr:`mode`."""
        mode = self._check_mode(mode)
        if count < 0:
            raise ValueError("count must not be negative")
        with self._lock:
            self._fail_count = count
            self._fail_mode = mode

    @property
    def requests(self) -> int:
        """HTTP requests received, digest challenges and failures included."""
        with self._lock:
            return self._requests

    @property
    def served(self) -> int:
        """Complete JPEG snapshots sent."""
        with self._lock:
            return self._served

    @property
    def status_requests(self) -> int:
        """Authenticated status calls (``getDevState``, ``deviceInfo``, ...) received."""
        with self._lock:
            return self._status_requests

    @property
    def connections(self) -> int:
        """TCP connections accepted."""
        with self._lock:
            return self._connections

    def reset_counters(self) -> None:
        """Set ``requests``, ``served`` and ``connections`` back to zero."""
        with self._lock:
            self._requests = self._served = self._connections = 0
            self._status_requests = 0

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def url(self, vendor: str) -> str:
        """The full snapshot URL for ``vendor`` without credentials (for generic specs)."""
        return self.base_url + PATHS[vendor]

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and start serving in a background thread; sets :attr:`port`."""
        if self._server is not None:
            raise RuntimeError("camera simulator already started")
        self._stopping.clear()
        server = _Server((self.host, self.port), self, self.spare_threads)
        self.port = server.server_port
        thread = threading.Thread(
            target=server.serve,
            name=f"camera-simulator-{self.port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        log.info("camera simulator listening on %s", self.base_url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: end hanging requests, close connections, join every thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        # First release handlers waiting in "hang" or latency, then stop accepting.
        self._stopping.set()
        server.wake_and_quit()
        thread.join(timeout)
        server.close_connections(timeout)
        server.server_close()
        self._server = self._thread = None
        log.info("camera simulator on port %d stopped", self.port)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- images ----------------------------------------------------------------------

    @staticmethod
    def _make_background(size: tuple[int, int]) -> Image.Image:
        horizontal = Image.linear_gradient("L").rotate(90).resize(size)
        vertical = Image.linear_gradient("L").resize(size)
        flat = Image.new("L", size, 96)
        return Image.merge("RGB", (horizontal, vertical, flat))

    @staticmethod
    def _load_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
        try:
            return ImageFont.load_default(size=24)
        except Exception:  # Pillow without FreeType has only the small bitmap font
            return ImageFont.load_default()

    def _render_jpeg(self, counter: int) -> bytes:
        if self._image is not None:
            return self._image
        image = self._background.copy()
        draw = ImageDraw.Draw(image)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._render_lock:
            draw.text((16, 16), f"{self.name}  #{counter}", fill=(255, 255, 255), font=self._font)
            draw.text((16, 52), stamp, fill=(255, 255, 255), font=self._font)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        return buffer.getvalue()

    # -- request handling ------------------------------------------------------------

    def _count_connection(self) -> None:
        with self._lock:
            self._connections += 1

    def _take_mode(self) -> str:
        with self._lock:
            if self._fail_count > 0:
                self._fail_count -= 1
                return self._fail_mode
            return self._mode

    def _new_nonce(self) -> str:
        nonce = secrets.token_hex(16)
        with self._lock:
            self._nonces[nonce] = None
            while len(self._nonces) > _MAX_NONCES:
                self._nonces.popitem(last=False)
        return nonce

    def _known_nonce(self, nonce: str) -> bool:
        with self._lock:
            return nonce in self._nonces

    def _digest_ok(self, handler: _Handler, user: str, password: str) -> tuple[bool, bool]:
        """Check the Authorization header; returns (valid, nonce_was_stale)."""
        params = _parse_digest(handler.headers.get("Authorization", ""))
        needed = ("username", "realm", "nonce", "uri", "response")
        if not all(name in params for name in needed):
            return False, False
        if not self._known_nonce(params["nonce"]):
            return False, True
        if params.get("algorithm", "MD5").upper() != "MD5" or params["realm"] != self.realm:
            return False, False
        if params["uri"] != handler.path:
            return False, False
        ha1 = _md5(f"{params['username']}:{self.realm}:{password}")
        ha2 = _md5(f"{handler.command}:{params['uri']}")
        qop = params.get("qop")
        if qop is None:
            expected = _md5(f"{ha1}:{params['nonce']}:{ha2}")
        elif qop == "auth" and "nc" in params and "cnonce" in params:
            expected = _md5(
                f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:{qop}:{ha2}"
            )
        else:
            return False, False
        valid = hmac.compare_digest(expected, params["response"].lower()) and hmac.compare_digest(
            params["username"].encode("utf-8"), user.encode("utf-8")
        )
        return valid, False

    def _digest_challenge(self, handler: _Handler, body: bytes, stale: bool) -> None:
        challenge = (
            f'Digest realm="{self.realm}", qop="auth", nonce="{self._new_nonce()}", '
            f'opaque="{secrets.token_hex(8)}", algorithm=MD5' + (", stale=true" if stale else "")
        )
        handler.reply(401, body, "text/plain", [("WWW-Authenticate", challenge)])

    @staticmethod
    def _basic_ok(handler: _Handler, user: str, password: str) -> bool:
        scheme, _, token = handler.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except ValueError:
            return False
        expected = f"{user}:{password}"
        return hmac.compare_digest(decoded.encode("utf-8"), expected.encode("utf-8"))

    def _handle(self, handler: _Handler) -> None:
        with self._lock:
            self._requests += 1
            latency = self._latency
            user, password = self._user, self._password
            generic_auth = self._generic_auth
        if latency > 0 and self._stopping.wait(latency):
            handler.close_connection = True
            return
        path, _, query = handler.path.partition("?")
        vendor = _VENDOR_BY_PATH.get(path) or _VENDOR_BY_STATUS_PATH.get(path)
        if vendor is None:
            handler.reply(404, b"not found\n", "text/plain")
            return
        params = _decode_query(query)
        if not self._authenticate(handler, vendor, params, user, password, generic_auth):
            return
        status = path in _VENDOR_BY_STATUS_PATH
        if vendor == "foscam":
            status = params.get("cmd") == "getDevState"
            if not status and params.get("cmd") != "snapPicture2":
                handler.reply(200, self._foscam_result(-1), "text/plain")
                return
        if vendor == "reolink":
            status = params.get("cmd") == "GetDevInfo"
            if not status and params.get("cmd") != "Snap":
                handler.reply(200, self._reolink_error(-9, "not support"), "application/json")
                return
        if vendor == "dahua" and status and params.get("action") != "getSystemInfo":
            handler.reply(400, b"Error\r\nBad Request!\r\n", "text/plain")
            return
        if status:
            with self._lock:
                self._status_requests += 1
            self._answer_status(handler, vendor, self._take_mode())
            return
        self._answer(handler, vendor, self._take_mode())

    def _answer_status(self, handler: _Handler, vendor: str, mode: str) -> None:
        """Answer a status call: the vendor's success document, or the failure ``mode``
        asks for (the image-only modes send the document cut in half or under 500/404)."""
        body, content_type = self._status_document(vendor)
        if mode == "ok":
            handler.reply(200, body, content_type)
        elif mode == "truncated":
            handler.reply(200, body[: len(body) // 2], content_type)
        elif mode in _JPEG_ERROR_STATUS:
            handler.reply(_JPEG_ERROR_STATUS[mode], body, content_type)
        else:
            self._answer(handler, vendor, mode)

    def _status_document(self, vendor: str) -> tuple[bytes, str]:
        if vendor == "foscam":
            return (
                b"<CGI_Result>\n    <result>0</result>\n    <IOAlarm>0</IOAlarm>\n"
                b"    <motionDetectAlarm>1</motionDetectAlarm>\n    <sdState>1</sdState>\n"
                b"</CGI_Result>\n",
                "text/plain",
            )
        if vendor == "hikvision":
            return (
                b'<?xml version="1.0" encoding="UTF-8"?>\n<DeviceInfo version="2.0" '
                b'xmlns="http://www.hikvision.com/ver20/XMLSchema">'
                b"<deviceName>" + self.name.encode() + b"</deviceName>"
                b"<model>DS-SIM</model><firmwareVersion>V5.0.0</firmwareVersion></DeviceInfo>\n",
                "application/xml",
            )
        if vendor == "dahua":
            return (
                b"deviceType=IPC-SIM\r\nhardwareVersion=1.00\r\nserialNumber=SIM0001\r\n",
                "text/plain",
            )
        info = {"model": "RLC-SIM", "name": self.name, "firmVer": "v3.0.0"}
        answer = [{"cmd": "GetDevInfo", "code": 0, "value": {"DevInfo": info}}]
        return json.dumps(answer).encode(), "application/json"

    def _authenticate(
        self,
        handler: _Handler,
        vendor: str,
        params: dict[str, str],
        user: str,
        password: str,
        generic_auth: str,
    ) -> bool:
        """Check the vendor's credentials; on failure send the vendor's refusal."""
        if vendor == "foscam":
            if params.get("usr") == user and params.get("pwd") == password:
                return True
            handler.reply(200, self._foscam_result(-2), "text/plain")
            return False
        if vendor == "reolink":
            if "user" not in params or "password" not in params:
                handler.reply(
                    200, self._reolink_error(-6, "please login first"), "application/json"
                )
                return False
            if params["user"] == user and params["password"] == password:
                return True
            handler.reply(200, self._reolink_error(-7, "login failed"), "application/json")
            return False
        auth = generic_auth if vendor == "generic" else "digest"
        if auth == "none":
            return True
        if auth == "basic":
            if self._basic_ok(handler, user, password):
                return True
            handler.reply(
                401,
                b"401 Unauthorized\n",
                "text/plain",
                [("WWW-Authenticate", f'Basic realm="{self.realm}"')],
            )
            return False
        valid, stale = self._digest_ok(handler, user, password)
        if valid:
            return True
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<userCheck><statusValue>401</statusValue>'
            b"<statusString>Unauthorized</statusString></userCheck>\n"
            if vendor == "hikvision"
            else b"Error\r\nInvalid Authority!\r\n"
        )
        self._digest_challenge(handler, body, stale)
        return False

    def _answer(self, handler: _Handler, vendor: str, mode: str) -> None:
        if mode == "hang":
            # Wait on the stop event, not a sleep, so stop() ends this at once.
            self._stopping.wait()
            handler.close_connection = True
            return
        if mode == "error":
            if vendor == "foscam":
                handler.reply(200, self._foscam_result(-4), "text/plain")
            elif vendor == "reolink":
                handler.reply(200, self._reolink_error(-1, "snap failed"), "application/json")
            else:
                handler.reply(500, b"500 Internal Server Error\n", "text/plain")
            return
        if mode == "unavailable":
            handler.reply(503, b"503 Service Unavailable\n", "text/plain")
            return
        if mode == "html":
            handler.reply(200, _HTML_ERROR, "text/html")
            return
        if mode == "garbage":
            # A fixed prefix so random bytes can never start like a JPEG.
            handler.reply(200, b"GARBAGE\x00" + os.urandom(2048), "image/jpeg")
            return
        with self._lock:
            counter = self._requests
        image = self._render_jpeg(counter)
        if mode == "truncated":
            handler.reply(200, image[: len(image) // 2], "image/jpeg")
            return
        if mode in _JPEG_ERROR_STATUS:
            # Not counted as served: the status says it is no snapshot.
            handler.reply(_JPEG_ERROR_STATUS[mode], image, "image/jpeg")
            return
        # Counted before sending, so a client that has the image sees the count.
        with self._lock:
            self._served += 1
        handler.reply(200, image, "image/jpeg")

    @staticmethod
    def _foscam_result(code: int) -> bytes:
        return f"<CGI_Result>\n    <result>{code}</result>\n</CGI_Result>\n".encode()

    @staticmethod
    def _reolink_error(code: int, detail: str) -> bytes:
        answer = [{"cmd": "Snap", "code": 1, "error": {"rspCode": code, "detail": detail}}]
        return json.dumps(answer).encode()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's command-line options (also ``snapshot-processor simulate-cameras``)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8088, help="port, 0 for any (default %(default)s)"
    )
    parser.add_argument("--user", default="admin", help="user name (default %(default)s)")
    parser.add_argument(
        "--password",
        default=os.environ.get("CAMERA_SIMULATOR_PASSWORD", "secret"),
        help="password (default: $CAMERA_SIMULATOR_PASSWORD or 'secret')",
    )
    parser.add_argument("--mode", choices=MODES, default="ok", help="failure mode")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--generic-auth", choices=GENERIC_AUTH_MODES, default="digest")
    parser.add_argument("--name", default="simulated camera", help="text drawn on the image")
    parser.add_argument(
        "--rtsp",
        action="store_true",
        help="also serve an H.264 stream at rtsp://HOST:RTSP_PORT/cam (GStreamer's RTSP server)",
    )
    parser.add_argument(
        "--rtsp-port",
        type=int,
        default=8554,
        help="the stream's port, 0 for any (default %(default)s)",
    )


def serve(args: argparse.Namespace) -> int:
    """Run the simulator with parsed options in the foreground until Ctrl-C or SIGTERM."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    simulator = CameraSimulator(
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        mode=args.mode,
        latency=args.latency,
        generic_auth=args.generic_auth,
        name=args.name,
    )
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {
        signum: signal.signal(signum, _on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        try:
            simulator.start()
        except OSError as exc:
            print(
                f"camera simulator cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 3
        print(
            f"camera simulator listening on {simulator.base_url} (user {args.user!r})", flush=True
        )
        for vendor, path in PATHS.items():
            print(f"  {vendor:<10} {simulator.base_url}{path}", flush=True)
        try:
            stream = _start_stream(args) if args.rtsp else None
            if args.rtsp and stream is None:
                return 3
            try:
                while not done.wait(0.5):
                    pass
            finally:
                if stream is not None:
                    stream.stop()
        finally:
            simulator.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _start_stream(args: argparse.Namespace) -> RtspServer | None:
    """The RTSP camera of ``--rtsp``, started; None (and why, on stderr) if it cannot run."""
    why = why_unavailable()
    if why is not None:
        print(f"camera simulator: no RTSP stream: {why}", file=sys.stderr)
        return None
    stream = RtspServer(
        args.user,
        args.password,
        host=args.host,
        port=args.rtsp_port,
        width=RTSP_SIZE[0],
        height=RTSP_SIZE[1],
        key_on_join=False,  # as a camera: one encoder runs, a reader joins at its next key frame
    )
    try:
        stream.start()
    except RuntimeError as exc:
        print(f"camera simulator: {exc}", file=sys.stderr)
        return None
    print(
        f"  rtsp       {stream.url(user='')} (H.264 {RTSP_SIZE[0]}x{RTSP_SIZE[1]}, 15 fps, "
        "a key frame every 2 s)",
        flush=True,
    )
    return stream


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.camera_simulator",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
