"""Decoding an RTSP stream with PyAV (FFmpeg's libraries in its wheels), imported only
where a camera streams: PyAV adds some 20 MB to a process that loads it.

:func:`grab` opens a stream, decodes its first key frame and closes it. A
:class:`WarmStream` keeps one open on a thread of its own: while idle it decodes only key
frames (and, for the pre-trigger ring, keeps them as JPEGs); it holds the packets since the
last key frame, so a trigger's frame is decoded from them without waiting for the next."""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import av
import av.error
from av.video.codeccontext import VideoCodecContext

from pylib.retry import RetryPolicy
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraBadImageError,
    CameraConnectionError,
    CameraError,
    CameraTimeoutError,
    CameraVendorError,
)
from snapshot_processor.camera.spec import Still

__all__ = ["StreamFailure", "WarmStream", "grab"]

log = logging.getLogger(__name__)

# Probing nothing: the SDP names the codec, and the default probe reads two seconds of
# stream before the first packet is handed over.
OPEN_OPTIONS = {"analyzeduration": "0", "probesize": "32"}
JPEG_QUALITY = 90


def jpeg(frame: av.VideoFrame) -> bytes:
    out = io.BytesIO()
    frame.to_image().save(out, "JPEG", quality=JPEG_QUALITY)  # type: ignore[no-untyped-call]
    return out.getvalue()


class StreamFailure:
    """Turns PyAV's errors, whose text quotes the URL and its password, into ours."""

    def __init__(self, key: str, shown: str, timeout: float, transport: str = "tcp") -> None:
        self.key, self.shown, self.timeout, self.transport = key, shown, timeout, transport

    def error(self, exc: Exception, started: float, doing: str) -> CameraError:
        words = f"{exc.strerror}" if isinstance(exc, av.error.FFmpegError) else type(exc).__name__
        where = f"({doing} {self.shown})"
        timed_out = time.monotonic() - started >= self.timeout - 0.05
        if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
            return CameraAuthError(
                f"{self.key}: RTSP: user name or password refused {where}", camera=self.key
            )
        if isinstance(exc, av.error.HTTPNotFoundError):
            return CameraVendorError(
                f"{self.key}: RTSP: no stream at this path {where}", camera=self.key
            )
        if isinstance(exc, av.error.ExitError) or (
            timed_out and isinstance(exc, av.error.InvalidDataError)
        ):
            return CameraTimeoutError(
                f"{self.key}: RTSP: no data for {self.timeout:g} s {where}", camera=self.key
            )
        if isinstance(exc, av.error.EOFError):
            return CameraConnectionError(f"{self.key}: RTSP: stream ended {where}", camera=self.key)
        if isinstance(exc, av.error.DecoderNotFoundError):
            return CameraVendorError(f"{self.key}: RTSP: {words} {where}", camera=self.key)
        return CameraConnectionError(f"{self.key}: RTSP: {words} {where}", camera=self.key)

    @contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except (av.error.FFmpegError, OSError) as exc:
            raise self.error(exc, started, doing) from None


@contextmanager
def _opened(
    url: str, timeout: float, failure: StreamFailure
) -> Iterator[av.container.InputContainer]:
    options = {**OPEN_OPTIONS, "rtsp_transport": failure.transport}
    with failure.translated("DESCRIBE"):
        container = av.open(url, options=options, timeout=(timeout, timeout))
    try:
        yield container
    finally:
        container.close()


def _video(container: av.container.InputContainer, failure: StreamFailure) -> av.VideoStream:
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "nothing"
        raise CameraVendorError(
            f"{failure.key}: RTSP: the stream holds no video it can decode (only {kinds}) "
            f"({failure.shown})",
            camera=failure.key,
        )
    return container.streams.video[0]


def _libc_trim() -> Callable[[int], int] | None:
    try:
        return cast(Callable[[int], int], ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to call
        return None


_MALLOC_TRIM = _libc_trim()


def _give_back() -> None:
    """Return the heap's free pages to the system after a decoding. glibc keeps what a thread
    freed in that thread's arena; decoded 1080p frames left eight warm streams' daemon at
    140 to 440 MB from one run to the next (docs/benchmarks.md)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _decoded(
    stream: av.VideoStream, packets: list[av.Packet], failure: StreamFailure
) -> av.VideoFrame:
    """The last frame of ``packets`` (a key frame first), by a decoder made for them and
    dropped after: a decoder kept between frames holds several 1080p frames."""
    name = stream.codec_context.name
    try:
        decoder = cast(VideoCodecContext, av.CodecContext.create(name, "r"))
    except (ValueError, av.error.FFmpegError):  # PyAV's UnknownCodecError is a ValueError
        raise CameraVendorError(
            f"{failure.key}: RTSP: the stream's codec {name!r} cannot be decoded here "
            f"({failure.shown})",
            camera=failure.key,
        ) from None
    if stream.codec_context.extradata:
        decoder.extradata = stream.codec_context.extradata
    decoder.thread_count = 1  # frame threads would hold a frame each, and hold frames back
    newest = None
    with failure.translated("decoding"):
        for packet in [*packets, None]:  # None flushes the decoder's last frame out
            for frame in decoder.decode(packet):
                newest = frame
    if not isinstance(newest, av.VideoFrame):
        raise CameraBadImageError(
            f"{failure.key}: RTSP: no frame decoded from the key frame on ({failure.shown})",
            camera=failure.key,
        )
    return newest


class _Group:
    """The packets since the last key frame; a frame is whole once a packet of another time
    follows it (a camera may send one frame as several packets)."""

    # Between two key frames: 40 s at 15 fps. A camera sending none for longer is stuck.
    LIMIT = 600

    def __init__(self) -> None:
        self.packets: list[av.Packet] = []
        self.key_packets = 0  # while the key frame may go on; 0 once it is whole

    def add(self, packet: av.Packet) -> list[av.Packet] | None:
        """Keep ``packet``; the key frame's packets when this one completes it."""
        key_time = self.packets[0].pts if self.packets else None
        if packet.is_keyframe and not (self.key_packets and packet.pts == key_time):
            self.packets, self.key_packets = [packet], 1
            return None
        if not self.packets:
            return None  # joined between key frames: nothing decodes before the next
        if len(self.packets) >= self.LIMIT:
            raise ValueError(f"no key frame in {self.LIMIT} packets")
        self.packets.append(packet)
        if not self.key_packets:
            return None
        if packet.pts == key_time:
            self.key_packets += 1
            return None
        whole, self.key_packets = self.packets[: self.key_packets], 0
        return whole

    def whole(self) -> list[av.Packet] | None:
        """The packets up to the last whole frame: all but the newest, once it is of another
        time than the one before (None while the key frame may still go on)."""
        if self.key_packets or len(self.packets) < 2:
            return None
        if self.packets[-1].pts == self.packets[-2].pts:
            return None
        return self.packets[:-1]


def grab(url: str, timeout: float, failure: StreamFailure) -> Still:
    """Open the stream, decode its first key frame, close it: the JPEG; within ``timeout``
    of the open (twice that at worst, for a camera slow to answer), else
    :class:`CameraTimeoutError`."""
    deadline = time.monotonic() + timeout  # the answer to DESCRIBE counts in it too
    with _opened(url, timeout, failure) as container:
        stream = _video(container, failure)
        group = _Group()
        with failure.translated("PLAY"):
            for packet in container.demux(stream):
                if packet.size and (key_frame := group.add(packet)) is not None:
                    arrived = time.time()
                    still = Still(arrived, jpeg(_decoded(stream, key_frame, failure)))
                    _give_back()
                    return still
                if time.monotonic() > deadline:
                    break
    raise CameraTimeoutError(
        f"{failure.key}: RTSP: no key frame within {timeout:g} s ({failure.shown})",
        camera=failure.key,
    )


@dataclass
class _Ask:
    """A trigger's wait for the newest frame, answered by the stream's thread."""

    answered: threading.Event = field(default_factory=threading.Event)
    still: Still | None = None
    error: CameraError | None = None


class WarmStream:
    """One camera's stream kept open on its own thread, reconnecting with the camera's retry
    policy; ``on_change`` hears each change of state (None: streaming; else why not).
    Frames are decoded on that thread only, so their memory is reused there, not spread
    over the snapshot stage's threads."""

    def __init__(
        self,
        url: str,
        failure: StreamFailure,
        *,
        pre_trigger: float,
        policy: RetryPolicy,
        on_change: Callable[[CameraError | None], None],
    ) -> None:
        self._url, self._failure, self._pre_trigger = url, failure, pre_trigger
        self._policy, self._on_change = policy, on_change
        self._lock = threading.Lock()
        self._asks: list[_Ask] = []  # guarded by _lock, as are the two below
        self._ring: collections.deque[Still] = collections.deque()
        self._error: CameraError | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtsp {failure.key}", daemon=True)
        self._thread.start()

    def still(self, timeout: float) -> Still:
        """The newest whole frame once the next packet comes, decoded from the last key frame
        on; waits up to ``timeout`` for a stream that stalls or reconnects, then raises why
        it has none."""
        ask = _Ask()
        with self._lock:
            if self._stopping.is_set():
                raise self._closing()
            self._asks.append(ask)
        if not ask.answered.wait(timeout):
            with self._lock:
                if ask in self._asks:
                    self._asks.remove(ask)
                error = self._error
            if not ask.answered.is_set():
                raise error or CameraTimeoutError(
                    f"{self._failure.key}: RTSP: no frame for {timeout:g} s "
                    f"({self._failure.shown})",
                    camera=self._failure.key,
                )
        if ask.error is not None:
            raise ask.error
        assert ask.still is not None
        return ask.still

    def before(self, moment: float) -> list[Still]:
        """The ring's stills from the ``pre_trigger`` seconds before ``moment`` (Unix time)."""
        with self._lock:
            return [s for s in self._ring if moment - self._pre_trigger <= s.taken < moment]

    def stop(self) -> None:
        """Tell the thread to end (see :meth:`join`); a snapshot waiting hears so at once."""
        with self._lock:
            self._stopping.set()
            asks, self._asks = self._asks, []
        for ask in asks:
            ask.error = self._closing()
            ask.answered.set()

    def join(self, timeout: float) -> None:
        """Wait for the thread: a live stream ends within a frame, a stalled one within the
        camera timeout."""
        self._thread.join(timeout)

    def _closing(self) -> CameraError:
        return CameraConnectionError(
            f"{self._failure.key}: RTSP: the stream is closing", camera=self._failure.key
        )

    def _run(self) -> None:
        failures = 0
        said = ""  # the last failure logged: a camera that stays away is said once
        while not self._stopping.is_set():
            try:
                self._stream()
                error: CameraError = CameraConnectionError(
                    f"{self._failure.key}: RTSP: stream ended ({self._failure.shown})",
                    camera=self._failure.key,
                )
            except CameraError as exc:
                error = exc.with_traceback(None)
            except Exception as exc:  # a bug of ours: reconnect rather than go silent
                log.exception("%s: RTSP stream failed unexpectedly", self._failure.key)
                error = CameraConnectionError(
                    f"{self._failure.key}: RTSP: {type(exc).__name__}", camera=self._failure.key
                )
            if self._stopping.is_set():
                return
            with self._lock:
                was_up, self._error = self._error is None, error
            failures = 1 if was_up else failures + 1
            # A refused password is asked again rarely: cameras lock an account out.
            policy = self._policy
            delay = policy.maximum if isinstance(error, CameraAuthError) else policy.delay(failures)
            level = logging.WARNING if str(error) != said else logging.DEBUG
            log.log(level, "%s; connecting again in %.0f s", error, delay)
            said = str(error)
            self._on_change(error)
            self._stopping.wait(delay)

    def _stream(self) -> None:
        opened = time.monotonic()
        with _opened(self._url, self._failure.timeout, self._failure) as container:
            stream = _video(container, self._failure)
            group = _Group()
            streaming = False
            with self._failure.translated("PLAY"):
                for packet in container.demux(stream):
                    if self._stopping.is_set():
                        return
                    if not packet.size:
                        continue
                    arrived = time.time()
                    try:
                        key_frame = group.add(packet)
                    except ValueError as exc:
                        raise CameraBadImageError(
                            f"{self._failure.key}: RTSP: {exc} ({self._failure.shown})",
                            camera=self._failure.key,
                        ) from None
                    if key_frame is not None:
                        self._remember(stream, key_frame)
                        _give_back()
                        if not streaming:
                            streaming = True
                            self._started()
                    elif not streaming and time.monotonic() - opened > self._failure.timeout:
                        raise CameraTimeoutError(
                            f"{self._failure.key}: RTSP: no key frame within "
                            f"{self._failure.timeout:g} s ({self._failure.shown})",
                            camera=self._failure.key,
                        )
                    if (
                        streaming
                        and (whole := group.whole()) is not None
                        and self._answer(stream, whole, arrived)
                    ):
                        _give_back()

    def _answer(self, stream: av.VideoStream, packets: list[av.Packet], arrived: float) -> bool:
        """Answer the snapshots waiting, if any (True: a frame was decoded)."""
        with self._lock:
            asks, self._asks = self._asks, []
        if not asks:
            return False
        still: Still | None = None
        error: CameraError | None = None
        try:
            # Its time is the arrival of the packet that showed it whole.
            still = Still(arrived, jpeg(_decoded(stream, packets, self._failure)))
        except CameraError as exc:
            error = exc.with_traceback(None)
        for ask in asks:
            ask.still, ask.error = still, error
            ask.answered.set()
        return True

    def _remember(self, stream: av.VideoStream, key_frame: list[av.Packet]) -> None:
        """Decode the key frame: that the stream decodes at all (its camera is seen), and
        the pre-trigger ring."""
        frame = _decoded(stream, key_frame, self._failure)
        if self._error is None:
            self._on_change(None)  # keeps the camera's last-seen time
        if self._pre_trigger <= 0:
            return
        still = Still(time.time(), jpeg(frame))
        with self._lock:
            self._ring.append(still)
            while self._ring and self._ring[0].taken < still.taken - self._pre_trigger:
                self._ring.popleft()

    def _started(self) -> None:
        with self._lock:
            was, self._error = self._error, None
        log.info("%s: RTSP stream %s", self._failure.key, "back" if was else "open")
        self._on_change(None)
