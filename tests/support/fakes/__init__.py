"""Loopback HTTP servers that stand in for outside systems in tests.

``LoopbackServer`` runs a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 in its own
thread; a fake subclasses it and answers parsed requests in :meth:`handle`. ``stop``
shuts the server down, closes its socket and joins every thread it started, so tests
that check for leaked threads and sockets pass.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    """One HTTP request as a fake saw it. Header names are lower case."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or ``None``."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Reply:
    """What a fake answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 resets clients that connect all at once.
    request_queue_size = 128


class LoopbackServer(abc.ABC):
    """An HTTP server on 127.0.0.1 with a free port, run in a thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def handle(self, request: Request) -> Reply:
        """Answer one request (called in a per-connection thread)."""

    @property
    def port(self) -> int:
        """The port the server listens on (only while started)."""
        if self._server is None:
            raise RuntimeError(f"{self._name} server is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Bind a free port and serve in a thread."""
        server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{self._name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and join all server threads."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        # Joins the per-request threads too (block_on_close): they end after one
        # request because the handler speaks HTTP/1.0 and closes each connection.
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _make_handler(fake: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # One request per connection: no keep-alive thread outlives its request.
        protocol_version = "HTTP/1.0"
        # A client that connects and sends nothing must not hold server_close() forever.
        timeout = 5

        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={key.lower(): value for key, value in self.headers.items()},
                body=body,
            )
            try:
                reply = fake.handle(request)
            except Exception as exc:  # a bug in a fake shows up as a 500, not a hang
                reply = Reply(500, f"{type(exc).__name__}: {exc}".encode())
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        # http.server dispatches on these names.
        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            # Keep test output quiet; the fakes record what they need.
            pass

    return Handler
