"""``healthcheck``: ask the running daemon's ``/healthz`` where its settings put it; the
image's HEALTHCHECK. Exit 0 on 200, else 1, with one short line either way."""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json

from pylib.config.settings import ConfigError
from snapshot_processor import config
from snapshot_processor.ops.settings import OpsSettings

HELP = "ask the running daemon's /healthz (address, port and token from the settings)"

EXIT_HEALTHY = 0
# Docker and podman read any other code than 0 and 1 as a broken check, not as unhealthy.
EXIT_UNHEALTHY = 1
# Within the image's HEALTHCHECK --timeout (5 s), with room for Python's start.
TIMEOUT = 3.0
# One short line: the health log keeps only the start of long output.
MAX_LINE = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT,
        help="seconds to wait for the answer (default %(default)s)",
    )


def target(ops: OpsSettings) -> tuple[str, int]:
    """(host, port) to ask: the bound address, or loopback when it is a wildcard."""
    bind = ops.http_bind.strip("[]")
    try:
        address = ipaddress.ip_address(bind)
    except ValueError:
        return bind, ops.http_port  # a host name: as the server resolved it
    if address.is_unspecified:
        return ("::1" if address.version == 6 else "127.0.0.1"), ops.http_port
    return str(address), ops.http_port


def _problems(body: bytes) -> str:
    """The reasons /healthz gives for a 503, joined; empty when it gives none."""
    try:
        report = json.loads(body)
        problems = report.get("problems") if isinstance(report, dict) else None
    except ValueError:
        return ""
    return "; ".join(str(problem) for problem in problems or [])


def check(ops: OpsSettings, timeout: float = TIMEOUT) -> tuple[bool, str]:
    """(healthy, the line saying so) after one GET of /healthz."""
    if not ops.http_port:
        return False, "HTTP is off (HTTP_PORT=0): there is no /healthz to ask"
    host, port = target(ops)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    headers = {}
    if ops.http_token_value:
        # Only a request from the container itself to a loopback name needs none.
        headers["Authorization"] = f"Bearer {ops.http_token_value}"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/healthz", headers=headers)
        response = connection.getresponse()
        body = response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"unhealthy: {url}: {getattr(exc, 'strerror', None) or exc}"
    finally:
        connection.close()
    if response.status == 200:
        return True, f"healthy: {url}"
    why = _problems(body)
    return False, f"unhealthy: HTTP {response.status} from {url}{': ' + why if why else ''}"


def run(args: argparse.Namespace) -> int:
    """One health question, one line; 0 when healthy."""
    try:
        settings = config.load(config_file=args.config)
    except ConfigError as exc:
        healthy, line = False, f"unhealthy: configuration: {exc.problems[0]}"
    else:
        healthy, line = check(settings.ops, args.timeout)
    print(line[:MAX_LINE])
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY
