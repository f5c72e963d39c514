"""A loopback Rekognition: the JSON 1.1 protocol's ``DetectLabels``, answered from a script.

boto3 posts ``/`` with ``X-Amz-Target: RekognitionService.DetectLabels`` and an
``application/x-amz-json-1.1`` body whose ``Image.Bytes`` is base64. Each test queues the
replies it wants (label lists or errors); once the queue is empty the default reply
(no labels) is given. Every call is recorded with its decoded image.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from tests.support.fakes import LoopbackServer, Reply, Request

TARGET_PREFIX = "RekognitionService."
JSON_TYPE = "application/x-amz-json-1.1"


@dataclass(frozen=True)
class DetectLabelsCall:
    """One DetectLabels request as the fake saw it."""

    params: dict[str, Any]
    image: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class ErrorReply:
    """An error the fake answers with: ``__type`` and HTTP status as AWS sends them."""

    type: str
    status: int = 400
    message: str = "scripted failure"


def label(
    name: str,
    confidence: float,
    *,
    boxes: list[tuple[float, float, float, float]] | None = None,
    parents: list[str] | None = None,
) -> dict[str, Any]:
    """A label as DetectLabels returns it; ``boxes`` are ``(left, top, width, height)``."""
    return {
        "Name": name,
        "Confidence": confidence,
        "Instances": [
            {
                "BoundingBox": {"Left": left, "Top": top, "Width": width, "Height": height},
                "Confidence": confidence,
            }
            for left, top, width, height in boxes or []
        ],
        "Parents": [{"Name": parent} for parent in parents or []],
        "Aliases": [],
        "Categories": [],
    }


class FakeRekognition(LoopbackServer):
    """Answers DetectLabels from a queue of scripted replies and records every call."""

    def __init__(self) -> None:
        super().__init__("rekognition")
        self._lock = threading.Lock()
        self._script: deque[list[dict[str, Any]] | ErrorReply] = deque()
        self._calls: list[DetectLabelsCall] = []
        self._holds: deque[threading.Event] = deque()

    def reply_labels(self, *replies: list[dict[str, Any]]) -> None:
        """Queue replies: each a list of labels (see :func:`label`)."""
        with self._lock:
            self._script.extend(replies)

    def reply_error(self, error_type: str, status: int = 400, times: int = 1) -> None:
        """Queue ``times`` error replies of this ``__type`` and status."""
        with self._lock:
            self._script.extend(ErrorReply(error_type, status) for _ in range(times))

    def hold_next_call(self) -> threading.Event:
        """The next call is recorded, then answered only once the returned event is set
        (or after 60 s): a backend that is mid-call for as long as a test needs."""
        release = threading.Event()
        with self._lock:
            self._holds.append(release)
        return release

    @property
    def calls(self) -> list[DetectLabelsCall]:
        """A copy of the DetectLabels calls received so far."""
        with self._lock:
            return list(self._calls)

    def handle(self, request: Request) -> Reply:
        target = request.headers.get("x-amz-target", "")
        if request.method != "POST" or request.path != "/":
            return _error(ErrorReply("UnknownOperationException", 404, "no such resource"))
        if not request.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256"):
            return _error(ErrorReply("MissingAuthenticationTokenException", 400, "unsigned"))
        if target != TARGET_PREFIX + "DetectLabels":
            return _error(ErrorReply("UnknownOperationException", 400, f"unknown {target!r}"))
        try:
            params = json.loads(request.body)
            image = base64.b64decode(params["Image"]["Bytes"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return _error(ErrorReply("InvalidParameterException", 400, "bad request body"))
        with self._lock:
            self._calls.append(DetectLabelsCall(params, image, dict(request.headers)))
            hold = self._holds.popleft() if self._holds else None
            scripted = self._script.popleft() if self._script else []
        if hold is not None:
            hold.wait(60)
        if isinstance(scripted, ErrorReply):
            return _error(scripted)
        body = {"Labels": scripted, "LabelModelVersion": "3.0"}
        return Reply(200, json.dumps(body).encode(), JSON_TYPE)


def _error(error: ErrorReply) -> Reply:
    body = {"__type": error.type, "Message": error.message}
    return Reply(
        error.status,
        json.dumps(body).encode(),
        JSON_TYPE,
        {"x-amzn-ErrorType": f"{error.type}:"},
    )
