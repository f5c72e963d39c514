"""A person's verdict on an event, as it comes over the bus: ``event.feedback.<topic>`` on the
control exchange, a msgpack map with ``event_id`` and ``verdict`` (``person`` or
``not_person``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

import msgpack

from pylib.chain.envelope import Envelope
from pylib.chain.settle import Settlement

FEEDBACK_KIND = "feedback"
VERDICTS = ("person", "not_person")
# An event id is ours (32 hex digits); a little room for other shapes, no more.
MAX_EVENT_ID = 128


class FeedbackMessageError(ValueError):
    """A feedback message of a shape we cannot use; ``reason`` labels its counter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def feedback_routing_key(topic: str) -> str:
    return f"event.feedback.{topic}"


@dataclass(frozen=True)
class FeedbackMessage:
    """A verdict on its way to the labelled set."""

    event_id: str
    verdict: str
    settlement: Settlement = field(default_factory=lambda: Settlement(None))

    @classmethod
    def parse(cls, body: bytes, max_bytes: int) -> Self:
        """The verdict in a message from the bus; :class:`FeedbackMessageError` if none."""
        if len(body) > max_bytes:
            raise FeedbackMessageError("too_large", f"{len(body)} bytes, over {max_bytes}")
        try:
            found: Any = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise FeedbackMessageError(
                "not_msgpack", f"not msgpack: {type(exc).__name__}"
            ) from None
        if not isinstance(found, dict):
            raise FeedbackMessageError("not_a_map", f"a {type(found).__name__}, not a map")
        event_id, verdict = found.get("event_id"), found.get("verdict")
        if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID:
            raise FeedbackMessageError("bad_event_id", "event_id is missing or not a short text")
        if verdict not in VERDICTS:
            raise FeedbackMessageError(
                "bad_verdict", f"verdict must be {' or '.join(VERDICTS)}, not {verdict!r:.40}"
            )
        return cls(event_id, verdict)

    def envelope(self) -> Envelope:
        body = {"event_id": self.event_id, "verdict": self.verdict, **self.settlement.fields()}
        return Envelope(FEEDBACK_KIND, body)

    @classmethod
    def read(cls, envelope: Envelope) -> Self:
        body = envelope.body
        return cls(str(body["event_id"]), str(body["verdict"]), Settlement.of(body))
