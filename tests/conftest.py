"""Shared fixtures: every test fails if it leaves a thread or a network socket behind."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest

from pylib.observe.redact import clear_secrets
from tests.support.broker import delete_named_exchanges

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
def _exchanges_removed_at_the_end() -> Iterator[None]:
    yield
    delete_named_exchanges()


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
