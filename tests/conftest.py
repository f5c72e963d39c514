"""Shared fixtures: every test fails if it leaves a thread or a network socket behind."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from pylib.envelope import BLOB_MIN
from pylib.redact import clear_secrets
from pylib.zmqctx import shared_context

# Fixtures shared by test modules: the fake Drive and a user's credentials for it.
pytest_plugins = ["tests.support.drive_credentials"]

SETTLE_SECONDS = 3.0


def _socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            inodes.add(target)
    return inodes


@pytest.fixture(autouse=True, scope="session")
def _zero_copy_thread() -> None:
    """pyzmq lets go of a zero-copy frame's bytes on a thread of its own, started by the
    first such send and kept for the life of the process (as in the daemon): start it
    before any test, so the test that happens to send first does not count it as leaked."""
    context = shared_context()
    pull = context.socket(zmq.PULL)
    push = context.socket(zmq.PUSH)
    try:
        pull.bind("inproc://zero-copy-warm-up")
        push.connect("inproc://zero-copy-warm-up")
        push.send(bytes(BLOB_MIN), copy=False)
        pull.recv(copy=False)
    finally:
        push.close(linger=0)
        pull.close(linger=0)


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    sockets_before = _socket_inodes()
    yield
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        gc.collect()  # a socket only referenced by garbage is closed by collection, not leaked
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        sockets = _socket_inodes() - sockets_before
        if not threads and not sockets:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"test leaked threads {[t.name for t in threads]} and/or {len(sockets)} socket(s)"
            )
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # Commands set up logging on the stderr of their test; a later test's lines must not
    # go to that closed stream.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    # Registered secrets are process-wide; a test must not depend on another's.
    yield
    clear_secrets()
