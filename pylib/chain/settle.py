"""The ack protocol: how work handed down the chain is reported done, in one place.

The owner of work puts an *ack token* (``reply_to``, its ack inbox, and keys of its own)
on what it sends down the chain. Each of its ``parts`` ends as a publish request or a done
mark; the publisher sends :func:`ack_part` back for each once it is stored (a done mark at
once), and the owner settles the work when all are in. A stage that fails on a message
still settles it (:func:`settle_failed`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client import Counter

from pylib.chain.attachment import Attachment
from pylib.chain.envelope import Envelope, EnvelopeError
from pylib.chain.sockets import Sender

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

ACK_KIND = "amqp.ack"
PUBLISH_KIND = "amqp.publish"
DONE_KIND = "amqp.done"

#: An ack token: ``reply_to`` plus whatever its owner put there, returned unchanged.
Ack = dict[str, Any]

ACKS_UNDELIVERED = Counter(
    "chain_acks_undelivered_total", "Acks that could not be passed to their owner", ["reason"]
)

# Distinct reply addresses a stage keeps a socket for.
MAX_REPLY_ADDRESSES = 32


def ack_token(reply_to: str, **keys: Any) -> Ack:
    """A new ack token for work owned by the component listening on ``reply_to``."""
    return {**keys, "reply_to": reply_to}


def ack_part(ack: Ack, parts: int = 1, *, requeue: bool = False) -> Envelope:
    """Tells the ack's owner one of ``parts`` parts is done (``requeue``: given back instead)."""
    return Envelope(ACK_KIND, {**ack, "parts": parts, "requeue": requeue})


@dataclass(frozen=True)
class Settlement:
    """What a message owes its owner: the ack token (None: nobody waits) and its part count."""

    ack: Ack | None
    parts: int = 1

    @classmethod
    def of(cls, body: dict[str, Any]) -> Settlement:
        """The settlement a message body carries; a malformed one owes nothing (and says so)."""
        ack, parts = body.get("ack"), body.get("parts", 1)
        if ack is not None and not (
            isinstance(ack, dict) and isinstance(ack.get("reply_to", ""), str)
        ):
            log.error("a message carries a malformed ack token (%s)", type(ack).__name__)
            ack = None
        if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
            parts = 1
        return cls(ack, parts)

    def split(self, parts: int) -> Settlement:
        """The same work, now in ``parts`` parts that each settle separately."""
        return Settlement(self.ack, parts)

    def fields(self) -> dict[str, Any]:
        return {"ack": self.ack, "parts": self.parts}


def done_envelope(settlement: Settlement, *, requeue: bool = False) -> Envelope:
    """A part that produced nothing to publish: it still counts towards its work's ack.
    ``requeue``: the part could not be kept (a full disk); the work goes back to its owner."""
    body = settlement.fields()
    return Envelope(DONE_KIND, {**body, "requeue": True} if requeue else body)


def settle_failed(envelope: Envelope) -> Envelope | None:
    """The done mark that settles a message a stage failed on, if it carries an ack."""
    settlement = Settlement.of(envelope.body)
    return done_envelope(settlement) if settlement.ack is not None else None


@dataclass(frozen=True)
class Publication:
    """One message to publish; ``attachment`` names a file that holds part of the body."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    attachment: Attachment | None = None


def publish_envelope(
    publication: Publication, settlement: Settlement, msg_id: str | None = None
) -> Envelope:
    """The request that asks the publisher to store and publish ``publication``, then ack."""
    body = {
        "exchange": publication.exchange,
        "routing_key": publication.routing_key,
        "body": publication.body,
        "headers": publication.headers,
        **settlement.fields(),
    }
    if publication.attachment is not None:
        body["attachment"] = publication.attachment.fields()
    return Envelope(PUBLISH_KIND, body) if msg_id is None else Envelope(PUBLISH_KIND, body, msg_id)


# Owners in this process that take acks by a direct call (on the sender's thread) rather
# than through their inbox: one thread hand-off and one message less per settled work.
_DIRECT: dict[str, Callable[[dict[str, Any]], None]] = {}
_DIRECT_LOCK = threading.Lock()


def take_acks_directly(address: str, callback: Callable[[dict[str, Any]], None]) -> None:
    """Acks for ``address`` are handed to ``callback`` (thread-safe, quick, never raising
    for a bad ack) on the thread that settles the work."""
    with _DIRECT_LOCK:
        _DIRECT[address] = callback


def stop_taking_acks_directly(address: str) -> None:
    """Acks for ``address`` go through its inbox again."""
    with _DIRECT_LOCK:
        _DIRECT.pop(address, None)


class AckInbox:
    """The owner side of acks, one helper for every owner (the listener, the ingest stage).
    While open, this process's acks reach ``on_ack`` directly (:func:`take_acks_directly`);
    those that come as messages go through :meth:`take`, on whichever thread reads the inbox."""

    def __init__(self, address: str, on_ack: Callable[[Ack], None]) -> None:
        self.address = address
        self.on_ack = on_ack

    def open(self) -> None:
        take_acks_directly(self.address, self.on_ack)

    def close(self) -> None:
        """Acks go to the inbox again (read by nobody once its reader has stopped)."""
        stop_taking_acks_directly(self.address)

    def take(self, parts: list[bytes]) -> None:
        """One ack that came as a message on the inbox."""
        try:
            envelope = Envelope.unpack(parts)
        except EnvelopeError as exc:
            ACKS_UNDELIVERED.labels("malformed").inc()
            log.error("%s: dropped a malformed ack: %s", self.address, exc)
            return
        self.on_ack(envelope.body)


class Replies:
    """Sends acks to their owners: directly (:func:`take_acks_directly`) or to their inbox.
    Never blocks: an owner that is gone gets its work again another way (the broker
    redelivers, the upload dir is scanned at start). Use and close from one thread."""

    def __init__(self, default: str | None = None) -> None:
        self.default = default
        self._senders: dict[str, Sender] = {}

    def address(self, ack: Ack) -> str | None:
        address = ack.get("reply_to") or self.default
        return address if isinstance(address, str) and address else None

    def send(self, settlement: Settlement, *, requeue: bool = False) -> bool:
        """Send one ack for ``settlement``; False if nobody waits or it could not be passed."""
        ack = settlement.ack
        if ack is None:
            return False
        address = self.address(ack)
        if address is None:
            return False
        with _DIRECT_LOCK:
            direct = _DIRECT.get(address)
        if direct is not None:
            try:
                direct(ack_part(ack, settlement.parts, requeue=requeue).body)
            except Exception:
                ACKS_UNDELIVERED.labels("owner_failed").inc()
                log.exception("the owner of %s failed to take an ack", address)
                return False
            return True
        sender = self._senders.get(address)
        if sender is None:
            if len(self._senders) >= MAX_REPLY_ADDRESSES:
                ACKS_UNDELIVERED.labels("too_many_addresses").inc()
                log.error("too many reply addresses; no ack to %s", address)
                return False
            sender = self._senders[address] = Sender(address, linger=0)
        if not sender.send(ack_part(ack, settlement.parts, requeue=requeue), block=False):
            ACKS_UNDELIVERED.labels("inbox_full").inc()
            log.warning("could not pass an ack to %s", address)
            return False
        return True

    def close(self) -> None:
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()


class PartCounter(Generic[K]):
    """The owner's side: work handed out and how many of its parts came back done."""

    def __init__(self) -> None:
        self._done: dict[K, int] = {}

    def add(self, key: K) -> None:
        self._done[key] = 0

    def done(self, key: K, parts: int) -> bool:
        """One part of ``key`` is done; True once all ``parts`` are (and it is forgotten)."""
        if key not in self._done:
            return False
        count = self._done[key] + 1
        if count >= parts:
            del self._done[key]
            return True
        self._done[key] = count
        return False

    def parts_done(self, key: K) -> int:
        """How many parts of ``key`` came back done so far (0 if unknown)."""
        return self._done.get(key, 0)

    def discard(self, key: K) -> bool:
        """Forget ``key`` (given back, or its connection is gone); True if it was waiting."""
        return self._done.pop(key, None) is not None

    def clear(self) -> None:
        self._done.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._done

    def __iter__(self) -> Iterator[K]:
        return iter(self._done)

    def __len__(self) -> int:
        return len(self._done)
