"""The typed message carried between threads: plain data packed with msgpack, never pickle."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack

ENVELOPE_VERSION = 1


class EnvelopeError(ValueError):
    """Bytes that are not a well-formed envelope."""


def new_id() -> str:
    """A unique id for a message or an event."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Envelope:
    """One message: what it is (``kind``), its data (``body``), an id and when it was made."""

    kind: str
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    created: float = field(default_factory=time.time)

    def pack(self) -> bytes:
        """Serialise to msgpack bytes."""
        packed: bytes = msgpack.packb(
            {
                "v": ENVELOPE_VERSION,
                "kind": self.kind,
                "id": self.id,
                "created": self.created,
                "body": self.body,
            },
            use_bin_type=True,
        )
        return packed

    @classmethod
    def unpack(cls, data: bytes) -> Envelope:
        """Parse msgpack bytes; raises :class:`EnvelopeError` on anything malformed."""
        try:
            raw = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise EnvelopeError(f"not msgpack: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("v") != ENVELOPE_VERSION:
            raise EnvelopeError(f"not an envelope of version {ENVELOPE_VERSION}")
        kind, body, ident, created = (
            raw.get("kind"),
            raw.get("body"),
            raw.get("id"),
            raw.get("created"),
        )
        if not isinstance(kind, str) or not isinstance(body, dict) or not isinstance(ident, str):
            raise EnvelopeError("envelope lacks kind, body or id")
        if not isinstance(created, int | float):
            raise EnvelopeError("envelope lacks its creation time")
        return cls(kind=kind, body=body, id=ident, created=float(created))
