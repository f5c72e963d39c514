"""Detection work over RabbitMQ, between a daemon (``DETECTION_REMOTE``) and the
``detect-worker`` processes: the queue, a request and its reply.

A request is the JPEG itself, with ``reply_to`` (RabbitMQ's direct reply-to), a
``correlation_id`` and an ``expiration`` of the daemon's wait: a request nobody took in time
leaves the queue unseen. The queue is not durable: a request is worth nothing after that
wait, and the daemon publishes the frame without detections whether or not one comes. The
reply is JSON: the decision (detections, whose answer stands, why) or the error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from snapshot_processor.detection.base import Box, Detection, DetectionError
from snapshot_processor.detection.cascade import Decision

REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_CONTENT_TYPE = "application/json"
# A reply is a few hundred bytes; anything far larger is not ours.
MAX_REPLY_BYTES = 1_048_576


def work_queue(exchange: str, device_topic: str) -> str:
    """The queue the daemons of one exchange and topic send detection work to."""
    return f"{exchange}.{device_topic}.detection"


def encode_decision(decision: Decision) -> bytes:
    return json.dumps(
        {
            "detections": [detection.as_dict() for detection in decision.detections],
            "backend": decision.backend,
            "why": decision.why,
            "local_person_confidence": decision.local_person_confidence,
        }
    ).encode()


def encode_error(error: DetectionError) -> bytes:
    return json.dumps({"error": {"reason": error.reason, "message": error.message}}).encode()


class ReplyError(ValueError):
    """A reply that is not one a worker sends."""


@dataclass(frozen=True)
class Reply:
    """What a worker answered: a decision, or the error it met."""

    decision: Decision | None
    error: DetectionError | None

    @classmethod
    def parse(cls, body: bytes) -> Reply:
        if len(body) > MAX_REPLY_BYTES:
            raise ReplyError(f"{len(body)} bytes, more than a reply holds")
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ReplyError("not a JSON object")
            error = data.get("error")
            if error is not None:
                return cls(None, DetectionError(str(error["reason"]), str(error["message"])))
            detections = [_detection(item) for item in data["detections"]]
            local = data.get("local_person_confidence")
            why = data.get("why")
            return cls(
                Decision(
                    detections,
                    str(data["backend"]),
                    why=str(why) if why is not None else None,
                    local_person_confidence=float(local) if local is not None else None,
                ),
                None,
            )
        except ReplyError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ReplyError(f"{type(exc).__name__}: {exc}") from None


def _detection(item: Any) -> Detection:
    box = item["box"]
    return Detection(
        label=str(item["label"]),
        confidence=float(item["confidence"]),
        box=Box(float(box["left"]), float(box["top"]), float(box["width"]), float(box["height"]))
        if box is not None
        else None,
        person=bool(item["person"]),
    )
