"""A loopback S3 endpoint that answers every request with one scripted S3 error.

moto's server stands in for S3 that works; this one stands in for S3 that throttles,
fails or denies, which moto does not do on demand.
"""

from __future__ import annotations

from tests.support.fakes import LoopbackServer, Reply, Request


class FailingS3(LoopbackServer):
    """Answers ``status`` with an S3 error document of ``code`` and records requests."""

    def __init__(self, status: int, code: str, message: str = "scripted failure") -> None:
        super().__init__("failing-s3")
        self.status = status
        self.code = code
        self.message = message
        self.requests: list[Request] = []

    def handle(self, request: Request) -> Reply:
        self.requests.append(request)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{self.code}</Code><Message>{self.message}</Message>"
            "<RequestId>0</RequestId></Error>"
        )
        return Reply(self.status, body.encode(), content_type="application/xml")


class MisstoringS3(LoopbackServer):
    """Takes every PUT and answers 200 with the ETag of other bytes: a store that kept
    something other than what was sent."""

    def __init__(self) -> None:
        super().__init__("misstoring-s3")
        self.requests: list[Request] = []

    def handle(self, request: Request) -> Reply:
        self.requests.append(request)
        return Reply(200, b"", headers={"ETag": '"0123456789abcdef0123456789abcdef"'})
