"""The daemon's health check under a crowd of trickling clients (a slowloris), measured.

Starts the daemon from a checkout (this one by default) with no cameras and a free HTTP
port, opens ``--clients`` connections that each send a partial request and one more
header line every ``--trickle`` seconds, and meanwhile asks ``/healthz`` from 127.0.0.1
once a second. The crowd comes from ``--addresses`` loopback addresses (127.0.0.2 and
up), or from 127.0.0.1 itself with ``--addresses 0``. Prints what the health checks got.

    python -m tools.http_siege --clients 500 --seconds 30
    python -m tools.http_siege --checkout /tmp/old   # an older commit, for a before figure

Needs RabbitMQ on 127.0.0.1:5672; sends nothing beyond loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health(port: int) -> tuple[str, float]:
    """What one health check got (a status, or the error's name) and how long it took."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=4)
    try:
        connection.request("GET", "/healthz")
        status = str(connection.getresponse().status)
    except (OSError, http.client.HTTPException) as exc:
        status = type(exc).__name__
    finally:
        connection.close()
    return status, time.monotonic() - started


def crowd(port: int, clients: int, addresses: int, trickle: float, stop: threading.Event) -> None:
    """Open the trickling clients and keep each one sending a header line now and then;
    one whose connection ended connects again, as an attacker's would."""
    sources = [f"127.0.0.{2 + n % addresses}" if addresses else "127.0.0.1" for n in range(clients)]
    sockets: list[socket.socket | None] = [None] * clients
    line = 0
    try:
        while not stop.is_set():
            line += 1
            for n, source in enumerate(sources):
                sock = sockets[n]
                try:
                    if sock is None:
                        sock = socket.create_connection(
                            ("127.0.0.1", port), timeout=2, source_address=(source, 0)
                        )
                        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                        sockets[n] = sock
                    sock.sendall(f"X-Slow-{line}: yes\r\n".encode())
                except OSError:
                    if sock is not None:
                        sock.close()
                    sockets[n] = None
            stop.wait(trickle)
    finally:
        for sock in sockets:
            if sock is not None:
                sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, default=Path.cwd())
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--addresses", type=int, default=40)
    parser.add_argument("--trickle", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)

    port = free_port()
    with tempfile.TemporaryDirectory() as root:
        env = {
            **os.environ,
            "SNAPSHOTS_ROOT_DIR": str(Path(root) / "data"),
            "SECRETS_DIR": str(Path(root) / "no-secrets"),
            "RABBITMQ_EXCHANGE": f"siege_{port}",
            "DEVICE_NAME": "siege",
            "HTTP_PORT": str(port),
            "LOG_LEVEL": "WARNING",
        }
        with open(Path(root) / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "snapshot_processor", "run"],
                cwd=args.checkout,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stop = threading.Event()
            attacker = threading.Thread(
                target=crowd, args=(port, args.clients, args.addresses, args.trickle, stop)
            )
            try:
                deadline = time.monotonic() + 30
                while health(port)[0] != "200":
                    if time.monotonic() > deadline or daemon.poll() is not None:
                        print("the daemon did not become healthy", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
                attacker.start()
                time.sleep(min(2.0, args.trickle))
                answers: list[tuple[str, float]] = []
                end = time.monotonic() + args.seconds
                while time.monotonic() < end:
                    answers.append(health(port))
                    time.sleep(1.0)
            finally:
                stop.set()
                if attacker.is_alive():
                    attacker.join()
                daemon.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    daemon.wait(30)
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()
    statuses = Counter(status for status, _ in answers)
    took = [seconds * 1000 for status, seconds in answers if status == "200"]
    print(
        f"{args.clients} trickling clients from "
        f"{args.addresses or 1} address(es), a line every {args.trickle:g} s: "
        f"{len(answers)} health checks, "
        + ", ".join(f"{n} answered {status}" for status, n in statuses.most_common())
        + (
            f"; 200s took {statistics.median(took):.1f} ms (median), {max(took):.1f} ms (max)"
            if took
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
