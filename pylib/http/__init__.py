"""The daemon's HTTP server: routes, access rules, a server that holds against slow clients."""

from pylib.http.access import SESSION_COOKIE, GuessThrottle, TokenAuth
from pylib.http.routing import Request, Response, Router
from pylib.http.server import HttpServer

__all__ = [
    "SESSION_COOKIE",
    "GuessThrottle",
    "HttpServer",
    "Request",
    "Response",
    "Router",
    "TokenAuth",
]
