"""Bytes of a message body that are kept in a file, so a store of messages need not copy them.

A snapshot is already on disk when its event is stored. The producer promises that ``path``
holds exactly ``body[offset:offset + size]``, synced (file and name) before the message is
stored and unchanged until published; a CRC-32 catches a file that changed or went missing."""

from __future__ import annotations

import os
import stat
import zlib
from dataclasses import dataclass
from typing import Any


class AttachmentError(Exception):
    """The attached file cannot give back the bytes the message needs (gone, changed)."""


@dataclass(frozen=True)
class Attachment:
    """``size`` bytes of a body, from ``offset`` on, are the whole content of ``path``."""

    path: str
    offset: int
    size: int

    def __post_init__(self) -> None:
        if not self.path or self.offset < 0 or self.size <= 0:
            raise ValueError(
                f"not an attachment: {self.path!r} at {self.offset}, {self.size} bytes"
            )

    def fields(self) -> list[Any]:
        """As a list, for a message between stages."""
        return [self.path, self.offset, self.size]

    @classmethod
    def of(cls, value: object) -> Attachment | None:
        """From :meth:`fields` (None stays None); ``ValueError`` for anything else."""
        if value is None:
            return None
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise ValueError(f"attachment must be [path, offset, size], not {value!r}")
        path, offset, size = value
        if not isinstance(path, str) or type(offset) is not int or type(size) is not int:
            raise ValueError(f"attachment must be [path, offset, size], not {value!r}")
        return cls(path, offset, size)

    def present(self) -> bool:
        """Whether ``path`` is a regular file of ``size`` bytes now (links not followed)."""
        try:
            found = os.lstat(self.path)
        except OSError:
            return False
        return stat.S_ISREG(found.st_mode) and found.st_size == self.size

    def check_within(self, length: int) -> None:
        """``ValueError`` unless a body of ``length`` bytes can hold the attached bytes."""
        if self.offset + self.size > length:
            raise ValueError(
                f"attachment {self.path!r} ({self.offset}+{self.size}) lies past the end of"
                f" a {length}-byte body"
            )

    def cut(self, body: bytes) -> tuple[bytes, int]:
        """The body without the attached bytes, and their CRC-32; ``ValueError`` if too short."""
        self.check_within(len(body))
        end = self.offset + self.size
        view = memoryview(body)
        return bytes(view[: self.offset]) + bytes(view[end:]), zlib.crc32(view[self.offset : end])

    def splice(self, rest: bytes, crc32: int) -> bytes:
        """The whole body again: ``rest`` with the file's bytes put back at ``offset``.
        :class:`AttachmentError` if the file cannot be read or its size or CRC-32 differ."""
        try:
            # Non-blocking, so a FIFO put in its place cannot hang the reader.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise AttachmentError(f"{self.path} cannot be read: {exc.strerror or exc}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise AttachmentError(f"{self.path} is not a regular file")
            chunks, got = [], 0
            while got <= self.size:  # one byte past the size tells a longer file
                chunk = os.read(fd, self.size + 1 - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            data = b"".join(chunks)
        except OSError as exc:
            raise AttachmentError(f"{self.path} cannot be read: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if len(data) != self.size:
            raise AttachmentError(
                f"{self.path} holds {len(data)}{'+' if len(data) > self.size else ''} bytes,"
                f" not the {self.size} stored"
            )
        if zlib.crc32(data) != crc32:
            raise AttachmentError(f"{self.path} changed since the message was stored")
        return rest[: self.offset] + data + rest[self.offset :]
