"""The typed message carried between threads: plain data packed with msgpack, never pickle."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

ENVELOPE_VERSION = 1

# A top-level bytes value at least this large (a snapshot) travels as a frame of its own
# (:meth:`Envelope.frames`): copied twice per hop instead of four times.
BLOB_MIN = 64 * 1024
# The msgpack extension type that stands for "frame n" in the envelope's body.
_BLOB_EXT = 1

BytesLike = bytes | bytearray | memoryview


class EnvelopeError(ValueError):
    """Bytes that are not a well-formed envelope."""


# The version (4: random) and variant (RFC 4122) bits of a UUID, as uuid.uuid4() sets them.
_VERSION_MASK = (0xF000 << 64) | (0xC000 << 48)
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A unique id for a message or an event: a random (version 4) UUID, in hex.
    ``random`` (seeded from the OS, again in a forked child), not ``uuid.uuid4()``, which
    makes a system call each time: an id must be unique, not secret."""
    bits = random.getrandbits(128)
    bits = (bits & ~_VERSION_MASK) | _VERSION_4
    return f"{bits:032x}"


@dataclass(frozen=True)
class Envelope:
    """One message: what it is (``kind``), its data (``body``), an id and when it was made."""

    kind: str
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    created: float = field(default_factory=time.time)

    def pack(self) -> bytes:
        """Serialise to msgpack bytes, in one frame."""
        return self._pack(self.body)

    def frames(self) -> list[bytes]:
        """Serialise as frames: the envelope, then each large bytes value (:data:`BLOB_MIN`)."""
        blobs: list[bytes] = []
        body = self.body
        for key, value in body.items():
            if isinstance(value, bytes) and len(value) >= BLOB_MIN:
                if not blobs:
                    body = dict(body)
                body[key] = msgpack.ExtType(_BLOB_EXT, len(blobs).to_bytes(4, "big"))
                blobs.append(value)
        return [self._pack(body), *blobs]

    def _pack(self, body: dict[str, Any]) -> bytes:
        packed: bytes = msgpack.packb(
            {
                "v": ENVELOPE_VERSION,
                "kind": self.kind,
                "id": self.id,
                "created": self.created,
                "body": body,
            },
            use_bin_type=True,
        )
        return packed

    @classmethod
    def unpack(cls, data: BytesLike | Sequence[BytesLike]) -> Envelope:
        """Parse :meth:`pack` or :meth:`frames` output; :class:`EnvelopeError` if malformed."""
        if isinstance(data, bytes | bytearray | memoryview):
            head, blobs = data, []
        elif data:
            head, *blobs = data
        else:
            raise EnvelopeError("no frames")
        used: set[int] = set()

        def blob(code: int, payload: bytes) -> object:
            if code != _BLOB_EXT:
                return msgpack.ExtType(code, payload)
            index = int.from_bytes(payload, "big")
            if len(payload) != 4 or index >= len(blobs) or index in used:
                raise ValueError(f"a reference to frame {index} of {len(blobs)}")
            used.add(index)
            return bytes(blobs[index])

        try:
            raw = msgpack.unpackb(head, raw=False, ext_hook=blob)
        except (ValueError, msgpack.UnpackException) as exc:
            raise EnvelopeError(f"not msgpack: {exc}") from exc
        if len(used) != len(blobs):
            raise EnvelopeError(f"{len(blobs) - len(used)} frame(s) that nothing refers to")
        if not isinstance(raw, dict) or raw.get("v") != ENVELOPE_VERSION:
            raise EnvelopeError(f"not an envelope of version {ENVELOPE_VERSION}")
        kind, body, ident, created = map(raw.get, ("kind", "body", "id", "created"))
        if not isinstance(kind, str) or not isinstance(body, dict) or not isinstance(ident, str):
            raise EnvelopeError("envelope lacks kind, body or id")
        if not isinstance(created, int | float):
            raise EnvelopeError("envelope lacks its creation time")
        return cls(kind=kind, body=body, id=ident, created=float(created))
