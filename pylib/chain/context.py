"""The process's one ZeroMQ context: ``inproc://`` only connects sockets of one context."""

from __future__ import annotations

import zmq


def shared_context() -> zmq.Context[zmq.Socket[bytes]]:
    return zmq.Context.instance()
