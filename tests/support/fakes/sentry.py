"""A loopback Sentry: accepts ``POST /api/<project>/envelope/`` and keeps the events."""

from __future__ import annotations

import gzip
import json
import threading
from typing import Any

from tests.support.fakes import LoopbackServer, Reply, Request
from tests.support.wait import wait_until

PUBLIC_KEY = "0123456789abcdef0123456789abcdef"


def parse_envelope(data: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """Split a Sentry envelope into its header and ``(item header, payload)`` pairs.

    Format: a JSON header line, then per item a JSON header line and a payload that is
    ``length`` bytes long when the header says so, else runs to the next newline.
    """
    header_line, _, rest = data.partition(b"\n")
    header: dict[str, Any] = json.loads(header_line)
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        if not item_line.strip():
            continue
        item_header: dict[str, Any] = json.loads(item_line)
        length = item_header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            rest = rest.removeprefix(b"\n")
        items.append((item_header, payload))
    return header, items


class SentryReceiver(LoopbackServer):
    """Receives envelopes for one project and keeps the ``event`` items as dicts.

    ``bodies`` holds every decompressed envelope as received, for byte-level checks.
    """

    def __init__(self, project: str = "42", public_key: str = PUBLIC_KEY) -> None:
        super().__init__("sentry")
        self.project = project
        self.public_key = public_key
        self._events: list[dict[str, Any]] = []
        self._bodies: list[bytes] = []
        self._lock = threading.Lock()

    @property
    def dsn(self) -> str:
        """``http://<public key>@127.0.0.1:<port>/<project>``."""
        return f"http://{self.public_key}@127.0.0.1:{self.port}/{self.project}"

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the events received so far."""
        with self._lock:
            return list(self._events)

    @property
    def bodies(self) -> list[bytes]:
        """Every envelope received, decompressed."""
        with self._lock:
            return list(self._bodies)

    def wait_for_events(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` events arrived; return them all.

        Raises:
            AssertionError: fewer arrived within ``timeout`` seconds.
        """
        if not wait_until(lambda: len(self.events) >= count, timeout):
            raise AssertionError(f"expected {count} Sentry event(s), got {len(self.events)}")
        return self.events

    def handle(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != f"/api/{self.project}/envelope/":
            return _json_reply(404, {"detail": "not found"})
        if not self._authorised(request):
            return _json_reply(401, {"detail": "missing or wrong sentry_key"})
        encoding = request.headers.get("content-encoding", "").lower()
        if encoding == "gzip":
            body = gzip.decompress(request.body)
        elif encoding in ("", "identity"):
            body = request.body
        else:
            return _json_reply(415, {"detail": f"unsupported Content-Encoding {encoding}"})
        header, items = parse_envelope(body)
        events = [json.loads(payload) for item, payload in items if item.get("type") == "event"]
        with self._lock:
            self._bodies.append(body)
            self._events.extend(events)
        return _json_reply(200, {"id": header.get("event_id")})

    def _authorised(self, request: Request) -> bool:
        # The SDK sends "X-Sentry-Auth: Sentry sentry_key=..., sentry_version=7, ...";
        # browsers put sentry_key in the query string instead.
        auth = request.headers.get("x-sentry-auth", "")
        fields = dict(
            part.strip().split("=", 1)
            for part in auth.removeprefix("Sentry ").split(",")
            if "=" in part
        )
        key = fields.get("sentry_key") or request.param("sentry_key")
        return key == self.public_key


def _json_reply(status: int, body: dict[str, Any]) -> Reply:
    return Reply(status, json.dumps(body).encode(), content_type="application/json")
