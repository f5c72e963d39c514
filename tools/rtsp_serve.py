"""An RTSP server serving H.264 (or H.265) made on the fly, GStreamer's: the stream
tests', the demo's and the bench's RTSP camera (``tools/rtsp_camera.py`` runs it).

Run by Debian's ``/usr/bin/python3``, which has GStreamer's bindings (``python3-gi``,
``gir1.2-gst-rtsp-server-1.0``, the good and ugly plugins); the project's virtualenv
does not. Prints ``listening on <port>`` once it serves ``/cam``.

    /usr/bin/python3 tools/rtsp_serve.py --port 8554 --user admin --password pw
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import ClassVar

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# x-gst: GStreamer's own payload, which no camera sends and FFmpeg cannot read. One thread
# for x264: zerolatency's sliced threads cut a frame into slices, and rtph264pay puts the
# parameter sets before each key slice, where FFmpeg's parser starts a new frame: a key
# frame reached a reader as two packets, each half a picture.
ENCODERS = {
    "h264": "x264enc name=enc tune=zerolatency speed-preset=ultrafast threads=1 key-int-max={key} ! "
    "rtph264pay name=pay0 pt=96 config-interval=1",
    "h265": "x265enc name=enc tune=zerolatency speed-preset=ultrafast key-int-max={key} ! "
    "rtph265pay name=pay0 pt=96 config-interval=1",
    "x-gst": "x264enc name=enc tune=zerolatency key-int-max={key} ! rtpgstpay name=pay0 pt=96",
}


class RunningEncoder:
    """One encoder that runs whether anyone watches or not, as a camera's does: a reader
    that joins gets the stream from where it is, and waits for its next key frame."""

    PAY: ClassVar = {"h264": "rtph264pay", "h265": "rtph265pay"}
    # The parameter sets' NAL unit types (SPS, PPS; and VPS for H.265).
    HEADERS: ClassVar = {"h264": {7, 8}, "h265": {32, 33, 34}}

    def __init__(self, args: argparse.Namespace) -> None:
        self.codec = args.codec
        self.readers: set[Gst.Element] = set()
        self.headers = b""  # the last key frame's parameter sets, for a reader that joins
        encoder = ENCODERS[args.codec].format(key=args.key_interval).partition(" ! rtp")[0]
        self.pipeline = Gst.parse_launch(
            f"videotestsrc is-live=true pattern={args.pattern} ! video/x-raw,width={args.width},"
            f"height={args.height},framerate={args.fps}/1 ! videoconvert ! {encoder} ! "
            f"video/x-{args.codec},stream-format=byte-stream,alignment=au ! "
            "appsink name=out emit-signals=true sync=false"
        )
        self.pipeline.get_by_name("out").connect("new-sample", self._sample)
        self.pipeline.set_state(Gst.State.PLAYING)

    def launch(self) -> str:
        # No parser: it would hold the reader's stream until the next key frame's headers.
        return (
            f"( appsrc name=src is-live=true format=time do-timestamp=true "
            f"caps=video/x-{self.codec},stream-format=byte-stream,alignment=au ! "
            f"{self.PAY[self.codec]} name=pay0 pt=96 config-interval=-1 )"
        )

    def configure(self, factory: object, media: GstRtspServer.RTSPMedia) -> None:
        source = media.get_element().get_by_name("src")
        if self.headers:  # the payloader describes the stream once it has seen them
            source.emit("push-buffer", Gst.Buffer.new_wrapped(self.headers))
        self.readers.add(source)
        media.connect("unprepared", lambda _media: self.readers.discard(source))

    def _parameter_sets(self, data: bytes) -> bytes:
        kept = b""
        for unit in data.split(b"\x00\x00\x01")[1:]:
            unit = unit.rstrip(b"\x00")
            kind = unit[0] & 0x1F if self.codec == "h264" else (unit[0] >> 1) & 0x3F
            if kind in self.HEADERS[self.codec]:
                kept += b"\x00\x00\x00\x01" + unit
        return kept

    def _sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        buffer = sink.emit("pull-sample").get_buffer()
        if not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT):
            self.headers = self._parameter_sets(buffer.extract_dup(0, buffer.get_size()))
        for reader in list(self.readers):
            copy = buffer.copy()
            copy.pts = copy.dts = Gst.CLOCK_TIME_NONE  # each reader's own clock stamps it
            reader.emit("push-buffer", copy)
        return Gst.FlowReturn.OK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--user", default=None)
    parser.add_argument("--password", default=None)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--key-interval", type=int, default=30, help="frames between key frames")
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    parser.add_argument("--pattern", default="ball", help="videotestsrc's picture")
    parser.add_argument("--path", action="append", help="mount point(s); default /cam")
    parser.add_argument(
        "--no-key-on-join",
        action="store_true",
        help="a reader that joins waits for the next key frame (h264, h265)",
    )
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    if args.no_key_on_join:
        running = RunningEncoder(args)
        factory.set_launch(running.launch())
        factory.connect("media-configure", running.configure)
    else:
        factory.set_launch(
            f"( videotestsrc is-live=true pattern={args.pattern} ! video/x-raw,width={args.width},"
            f"height={args.height},framerate={args.fps}/1 ! videoconvert ! "
            + ENCODERS[args.codec].format(key=args.key_interval)
            + " )"
        )
        factory.set_shared(True)
    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", "media.factory.access", True)
        permissions.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(permissions)
    for path in args.path or ["/cam"]:
        server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 3
    print(f"listening on {server.get_bound_port()}", flush=True)
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
