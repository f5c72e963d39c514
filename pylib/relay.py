"""Relay: a thread that pulls envelopes from an inproc address, handles each, pushes results on.

The chain between the daemon's threads is built from these: a PULL socket bound to the
relay's own address, a handler, and a PUSH socket connected to the next relay's address.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

import zmq
from prometheus_client import Counter

from pylib.envelope import Envelope, EnvelopeError
from pylib.worker import RestartBudget, Worker
from pylib.zmqctx import shared_context

log = logging.getLogger(__name__)

HandlerResult = Envelope | Iterable[Envelope] | None
Handler = Callable[[Envelope], HandlerResult]

MESSAGES_HANDLED = Counter("relay_messages_total", "Envelopes handled by a relay", ["relay"])
MESSAGES_REJECTED = Counter(
    "relay_messages_rejected_total",
    "Envelopes a relay could not decode or whose handler failed",
    ["relay", "reason"],
)

POLL_MS = 100

# Messages an inproc socket queues, per end, before a sender waits (or, not blocking, gets
# False). ZeroMQ's default of 1000 a side lets one link hold some 2000 JPEGs; stages never
# drop, so a small queue only turns a burst into back-pressure on the stage upstream.
HWM = 50


def inproc(name: str) -> str:
    """The inproc address of a named relay."""
    return f"inproc://{name}"


def drain(socket: zmq.Socket[bytes]) -> Iterator[bytes]:
    """Every message already queued on ``socket``, without waiting for more."""
    while True:
        try:
            yield socket.recv(zmq.NOBLOCK)
        except zmq.Again:
            return


def unpack_or_reject(data: bytes, stage: str) -> Envelope | None:
    """The envelope in ``data``; a malformed one is logged, counted and given as None."""
    try:
        return Envelope.unpack(data)
    except EnvelopeError as exc:
        MESSAGES_REJECTED.labels(stage, "malformed").inc()
        log.error("%s: dropped a malformed message (%d bytes): %s", stage, len(data), exc)
        return None


def bind_pull(address: str, *, hwm: int = HWM) -> zmq.Socket[bytes]:
    """A PULL socket bound to ``address``, queueing at most ``hwm`` messages.

    Bind it once per thread (:meth:`~pylib.worker.Worker.on_thread_open`): a PUSH that
    connected to an earlier socket on the address never reaches a new one.
    """
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
        """Send one envelope; True if it was queued.

        Blocking, it waits while the reader's queue is full (back-pressure). Not
        blocking, it returns False instead, and when no reader is there at all.
        """
        try:
            self.socket.send(envelope.pack(), 0 if block else zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        """Close the socket."""
        self.socket.close()


class Relay(Worker):
    """Pull, handle, push: one stage of the chain.

    A bad envelope or a failing handler is logged and counted, and the relay goes on
    with the next message. Its sockets live as long as its thread, so after a crash
    and restart upstream still reaches it and nothing queued is lost. On stop the relay first drains what is already in its
    inbox, so messages its upstream handed over are never dropped; stop the chain
    from its source downwards for that to hold.
    """

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        handler: Handler,
        *,
        inbox: str | None = None,
        outbox: str | None = None,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.handler = handler
        self.inbox = inbox or inproc(name)
        self.outbox = outbox
        self._pull: zmq.Socket[bytes] | None = None
        self._sender: Sender | None = None
        # Set once the PULL socket is bound, so upstream can start sending.
        self.ready = threading.Event()

    def on_thread_open(self) -> None:
        self._pull = bind_pull(self.inbox)
        if self.outbox is not None:
            self._sender = Sender(self.outbox)
        self.ready.set()

    def work(self) -> None:
        pull = self._pull
        assert pull is not None
        while self.should_keep_running():
            if pull.poll(POLL_MS):
                self._handle(pull.recv())
        # Drain what upstream already handed over before this relay was told to stop.
        for data in drain(pull):
            self._handle(data)

    def on_thread_close(self) -> None:
        self.ready.clear()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None

    def _handle(self, data: bytes) -> None:
        envelope = unpack_or_reject(data, self.name)
        if envelope is None:
            return
        try:
            result = self.handler(envelope)
        except Exception as exc:
            MESSAGES_REJECTED.labels(self.name, type(exc).__name__).inc()
            log.exception(
                "%s: handler failed on %s %s: %s", self.name, envelope.kind, envelope.id, exc
            )
            return
        MESSAGES_HANDLED.labels(self.name).inc()
        if result is None or self._sender is None:
            return
        for item in (result,) if isinstance(result, Envelope) else result:
            self._sender.send(item)
