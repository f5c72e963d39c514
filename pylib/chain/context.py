"""The process's one ZeroMQ context: ``inproc://`` only connects sockets of one context."""

from __future__ import annotations

import zmq


def shared_context() -> zmq.Context[zmq.Socket[bytes]]:
    """Return the process-wide context, creating it on first use."""
    return zmq.Context.instance()
