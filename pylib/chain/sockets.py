"""The inproc sockets that link the chain's threads, and reading envelopes off them safely.
Each socket belongs to the thread that made it: create, use and close it there."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import zmq
from prometheus_client import Counter

from pylib.chain.context import shared_context
from pylib.chain.envelope import Envelope, EnvelopeError

log = logging.getLogger(__name__)

MESSAGES_REJECTED = Counter(
    "chain_messages_rejected_total",
    "Messages a stage could not decode or whose handling failed",
    ["stage", "reason"],
)

# Messages an inproc socket queues, per end, before a sender waits. ZeroMQ's default of
# 1000 lets one link hold some 2000 JPEGs; a small queue turns a burst into back-pressure.
HWM = 50


def inproc(name: str) -> str:
    return f"inproc://{name}"


Parts = list[bytes]


def receive(socket: zmq.Socket[bytes], flags: int = 0) -> Parts:
    """One message, all its frames (:meth:`~pylib.chain.envelope.Envelope.frames`)."""
    return socket.recv_multipart(flags)


def drain(socket: zmq.Socket[bytes], limit: int | None = None) -> Iterator[Parts]:
    """Messages already queued on ``socket`` (at most ``limit``), without waiting for more."""
    taken = 0
    while limit is None or taken < limit:
        try:
            yield receive(socket, zmq.NOBLOCK)
        except zmq.Again:
            return
        taken += 1


def unpack_or_reject(parts: Parts, stage: str) -> Envelope | None:
    """The envelope in ``parts``; a malformed one is logged, counted and given as None."""
    try:
        return Envelope.unpack(parts)
    except EnvelopeError as exc:
        MESSAGES_REJECTED.labels(stage, "malformed").inc()
        size = sum(len(part) for part in parts)
        log.error("%s: dropped a malformed message (%d bytes): %s", stage, size, exc)
        return None


def bind_pull(address: str, *, hwm: int = HWM) -> zmq.Socket[bytes]:
    """A PULL socket bound to ``address``, queueing at most ``hwm`` messages. Bind it once per
    thread (:meth:`~pylib.runtime.worker.Worker.on_thread_open`): a PUSH connected to an
    earlier socket on the address never reaches a new one."""
    socket = shared_context().socket(zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, hwm)
    try:
        socket.bind(address)
    except zmq.ZMQError:
        socket.close(linger=0)
        raise
    return socket


class Sender:
    """A PUSH socket connected to one address; create, use and close it on one thread."""

    def __init__(self, address: str, *, linger: int = -1, hwm: int = HWM) -> None:
        self.address = address
        self.socket = shared_context().socket(zmq.PUSH)
        # By default keep queued messages at close: they were accepted and must reach the reader.
        self.socket.setsockopt(zmq.LINGER, linger)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.connect(address)

    def send(self, envelope: Envelope, *, block: bool = True) -> bool:
        """Send one envelope; True if queued. Blocking, it waits while the reader's queue is
        full; not blocking, it returns False then, and when there is no reader."""
        frames = envelope.frames()
        flags = 0 if block else zmq.NOBLOCK
        try:
            if len(frames) == 1:
                self.socket.send(frames[0], flags)
            else:
                # Copied, not zero-copy, which did not pay (docs/benchmarks.md). All or none.
                self.socket.send_multipart(frames, flags)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self.socket.close()
