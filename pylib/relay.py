"""Relay: a thread that pulls envelopes from an inproc address, handles each, pushes results on.

The chain between the daemon's threads is built from these: a PULL socket bound to the
relay's own address, a handler, and a PUSH socket connected to the next relay's address.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

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


def inproc(name: str) -> str:
    """The inproc address of a named relay."""
    return f"inproc://{name}"


class Sender:
    """A PUSH socket connected to one address; create, use and close it on one thread."""

    def __init__(self, address: str, *, linger: int = -1) -> None:
        self.socket = shared_context().socket(zmq.PUSH)
        # By default keep queued messages at close: they were accepted and must reach the reader.
        self.socket.setsockopt(zmq.LINGER, linger)
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
    with the next message. On stop the relay first drains what is already in its
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

    def on_thread_start(self) -> None:
        self._pull = shared_context().socket(zmq.PULL)
        self._pull.bind(self.inbox)
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
        while True:
            try:
                data = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handle(data)

    def on_thread_stop(self) -> None:
        self.ready.clear()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None

    def _handle(self, data: bytes) -> None:
        try:
            envelope = Envelope.unpack(data)
        except EnvelopeError as exc:
            MESSAGES_REJECTED.labels(self.name, "malformed").inc()
            log.error("%s: dropped a malformed message (%d bytes): %s", self.name, len(data), exc)
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
