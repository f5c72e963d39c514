"""Requests, responses and the routes that turn one into the other."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

# "public": anyone the server answers at all (the login form, login, logout); "local": this
# machine's own tools without the token (others need it when one is set); "token": the
# token, whoever asks (when one is set).
Access = Literal["public", "local", "token"]


@dataclass(frozen=True)
class Request:
    """One request, parsed: lower-case header names, the route's ``params``, the peer ``client``."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str]
    client: str = ""
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body, first value of each field."""
        fields = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0] for name, values in fields.items()}


@dataclass
class Response:
    """What a handler answers; a ``credential_refused`` one is delayed and counted (throttled)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    credential_refused: bool = False

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        body = json.dumps(value, separators=(",", ":"), default=str).encode()
        return cls(status, body, "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())

    @classmethod
    def redirect(cls, location: str) -> Response:
        """303 See Other: after a form post, the browser GETs ``location``."""
        return cls(303, b"", headers={"Location": location})


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """One route; a handler that ``checks_credential`` (a login form) is throttled on guessing."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler
    access: Access
    name: str
    checks_credential: bool = False


class Router:
    """Routes in the order they were added; the first full match answers."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        access: Access,
        name: str | None = None,
        checks_credential: bool = False,
    ) -> None:
        """Add a route; ``path`` is a regular expression matched against the whole path."""
        self.routes.append(
            Route(
                method,
                re.compile(path),
                handler,
                access,
                name or path.strip("^$"),
                checks_credential,
            )
        )

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """The route for ``method`` and ``path``, its groups, and whether the path is known."""
        known = False
        for route in self.routes:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            known = True
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, found.groupdict(), True
        return None, {}, known
