"""The test's ends of a stage under test: a sender into its inbox, a bound PULL at its outbox."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import zmq

from pylib.chain.envelope import Envelope
from pylib.chain.sockets import Sender, bind_pull, receive


class Wire:
    """``inbox`` is where the stage under test binds; ``outbox`` is bound here. Envelopes
    of the ``aside`` kinds are not received but kept in :attr:`set_aside`."""

    def __init__(self, name: str, aside: Collection[str] = ()) -> None:
        tag = uuid.uuid4().hex[:8]
        self.inbox = f"inproc://{name}-in-{tag}"
        self.outbox = f"inproc://{name}-out-{tag}"
        self.pull: zmq.Socket[bytes] = bind_pull(self.outbox)
        self.aside = frozenset(aside)
        self.set_aside: list[Envelope] = []

    @contextmanager
    def sender(self) -> Iterator[Sender]:
        """A PUSH into the stage's inbox, closed at the end."""
        sender = Sender(self.inbox, linger=0)
        try:
            yield sender
        finally:
            sender.close()

    def receive(self, count: int, timeout: float = 10.0) -> list[Envelope]:
        """Up to ``count`` envelopes the stage sent on, waiting at most ``timeout`` s."""
        received: list[Envelope] = []
        deadline = time.monotonic() + timeout
        while len(received) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.pull.poll(int(remaining * 1000) + 1):
                break
            envelope = Envelope.unpack(receive(self.pull))
            if envelope.kind in self.aside:
                self.set_aside.append(envelope)
            else:
                received.append(envelope)
        return received

    def close(self) -> None:
        """Close the PULL socket."""
        self.pull.close(linger=0)


@contextmanager
def wire(name: str, aside: Collection[str] = ()) -> Iterator[Wire]:
    """A :class:`Wire`, closed at the end."""
    ends = Wire(name, aside)
    try:
        yield ends
    finally:
        ends.close()
