"""Verdicts from the bus: each recorded in the labelled set, then its delivery settled."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from pylib.chain.envelope import Envelope
from pylib.chain.settle import Replies, Settlement
from pylib.chain.stage import Stage
from pylib.observe.logs import printable
from snapshot_processor.contract.feedback import FEEDBACK_KIND, FeedbackMessage
from snapshot_processor.detection.labelled import DETECTION_FEEDBACK_REFUSED, FeedbackError

log = logging.getLogger(__name__)

# ``record(event_id, verdict, source)``: a short note on what was kept; raises a
# ValueError-like error for a verdict that can never be kept, OSError or sqlite3.Error when
# the disk failed (then the broker delivers it again later).
Record = Callable[[str, str, str], str]


class VerdictStage(Stage):
    """Takes the bus's verdicts (from the feedback listener) and records them; a verdict that
    cannot be kept (an event long gone) is acked and counted where it was refused, one the
    disk failed to keep goes back to the queue."""

    def __init__(
        self,
        stop_event: threading.Event,
        record: Record,
        *,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__("verdicts", stop_event, on_fatal=on_fatal)
        self.record = record
        self._replies: Replies | None = None

    def on_thread_open(self) -> None:
        super().on_thread_open()
        self._replies = Replies()

    def on_thread_close(self) -> None:
        if self._replies is not None:
            self._replies.close()
            self._replies = None
        super().on_thread_close()

    def on_message(self, envelope: Envelope) -> None:
        # Settled whatever the message holds: this stage has no one downstream to do it.
        settlement = Settlement.of(envelope.body)
        requeue = False
        event_id = printable(str(envelope.body.get("event_id", "?")))
        try:
            if envelope.kind != FEEDBACK_KIND:
                raise ValueError(f"a {envelope.kind!r} message where a verdict belongs")
            message = FeedbackMessage.read(envelope)
            note = self.record(message.event_id, message.verdict, "bus")
            log.info("feedback: %s on event %s %s", message.verdict, event_id, note)
        except (OSError, sqlite3.Error) as exc:
            requeue = True
            log.warning("feedback on event %s not kept now (%s); later", event_id, exc)
        except (ValueError, KeyError) as exc:
            if not isinstance(exc, FeedbackError):  # those are counted where refused
                DETECTION_FEEDBACK_REFUSED.labels("bus", "bad_message").inc()
            log.warning("feedback on event %s not kept: %s", event_id, exc)
        finally:
            assert self._replies is not None
            self._replies.send(settlement, requeue=requeue)
