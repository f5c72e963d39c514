"""A fake ONVIF camera on 127.0.0.1: the device and media service calls the daemon makes
(SOAP 1.2 over HTTP, WS-Security password digests checked) and a WS-Discovery responder."""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Self
from urllib.parse import quote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from wsdiscovery.actions import NS_ACTION_PROBE, constructProbeMatch
from wsdiscovery.message import createSOAPMessage, parseSOAPMessage
from wsdiscovery.qname import QName
from wsdiscovery.scope import Scope
from wsdiscovery.service import Service

from snapshot_processor.camera.discovery import MULTICAST_GROUP, WS_DISCOVERY_PORT
from tests.support.fakes import LoopbackServer, Reply, Request

NVT = QName("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter", "dn")
_WSSE = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd}"
_WSU = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd}"
_BODY = "{http://www.w3.org/2003/05/soap-envelope}Body"
_TRT = "{http://www.onvif.org/ver10/media/wsdl}"
_SOAP = "application/soap+xml; charset=utf-8"
_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"'
    ' xmlns:tt="http://www.onvif.org/ver10/schema"'
    ' xmlns:tds="http://www.onvif.org/ver10/device/wsdl"'
    ' xmlns:trt="http://www.onvif.org/ver10/media/wsdl"'
    ' xmlns:ter="http://www.onvif.org/ver10/error">'
    "<s:Body>{}</s:Body></s:Envelope>"
)
_FAULT = (
    "<s:Fault><s:Code><s:Value>s:{}</s:Value><s:Subcode><s:Value>ter:{}</s:Value>"
    '</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en">{}</s:Text></s:Reason></s:Fault>'
)
_VIDEO_ENCODER = (
    '<tt:VideoEncoderConfiguration token="encoder"><tt:Name>encoder</tt:Name>'
    "<tt:UseCount>1</tt:UseCount><tt:Encoding>H264</tt:Encoding><tt:Resolution>"
    "<tt:Width>640</tt:Width><tt:Height>360</tt:Height></tt:Resolution>"
    "<tt:Quality>4</tt:Quality></tt:VideoEncoderConfiguration>"
)


def multicast_available() -> bool:
    """Whether multicast leaves this host by an interface other than loopback (the one
    WSDiscovery sends on, and the one a listener here hears its own probes on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((MULTICAST_GROUP, WS_DISCOVERY_PORT))  # UDP: nothing is sent
        except OSError:
            return False
        return not probe.getsockname()[0].startswith("127.")


class OnvifDevice(LoopbackServer):
    """``http://127.0.0.1:<port>/onvif/device_service`` and ``.../media_service``.

    Answers GetCapabilities, GetProfiles, GetSnapshotUri and GetStreamUri for ``user`` and
    ``password`` (a ``ter:NotAuthorized`` fault with HTTP ``auth_status`` otherwise);
    ``snapshot_uri=None`` answers GetSnapshotUri with ``ter:ActionNotSupported``. ``profiles``
    are (token, has a video encoder) in the order GetProfiles lists them. A WS-Discovery
    responder on UDP ``127.0.0.1:<discovery_port>`` (with ``multicast``, also on
    239.255.255.250:3702) answers Probes for a NetworkVideoTransmitter. ``calls`` counts the
    requests by operation (``Probe`` for discovery), answered or refused."""

    def __init__(
        self,
        user: str = "admin",
        password: str = "onvif-pass",
        *,
        snapshot_uri: str | None = "http://192.0.2.20/onvif-http/snapshot?Profile_1",
        stream_uri: str = "rtsp://192.0.2.20:554/Streaming/Channels/101",
        profiles: Sequence[tuple[str, bool]] = (("audio", False), ("main", True)),
        auth_status: int = 400,
        name: str = "Fake Camera",
        hardware: str = "FC-1",
        multicast: bool = False,
    ) -> None:
        super().__init__("onvif-device")
        self.user, self.password = user, password
        self.snapshot_uri, self.stream_uri = snapshot_uri, stream_uri
        self.profiles, self.auth_status = list(profiles), auth_status
        self.name, self.hardware, self.multicast = name, hardware, multicast
        self.endpoint = f"urn:uuid:{uuid.uuid4()}"
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._responder: threading.Thread | None = None

    @property
    def device_url(self) -> str:
        return f"{self.base_url}/onvif/device_service"

    @property
    def discovery_port(self) -> int:
        """The responder's unicast UDP port on 127.0.0.1 (only while started)."""
        return int(self._sockets[0].getsockname()[1])

    def start(self) -> Self:
        super().start()
        try:
            unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sockets.append(unicast)
            unicast.bind(("127.0.0.1", 0))
            if self.multicast:
                group = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._sockets.append(group)
                group.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                group.bind(("", WS_DISCOVERY_PORT))
                membership = struct.pack(
                    "4s4s", socket.inet_aton(MULTICAST_GROUP), socket.inet_aton("0.0.0.0")
                )
                group.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            for sock in self._sockets:
                sock.settimeout(0.05)
        except OSError:
            self.stop()
            raise
        self._responder = threading.Thread(target=self._respond, name="fake-ws-discovery")
        self._responder.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._responder is not None:
            self._responder.join()
            self._responder = None
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        super().stop()

    def _count(self, operation: str) -> None:
        with self._lock:
            self.calls[operation] += 1

    def handle(self, request: Request) -> Reply:
        envelope = ElementTree.fromstring(request.body)
        body = envelope.find(_BODY)
        operation = body[0] if body is not None and len(body) else None
        name = "?" if operation is None else operation.tag.rpartition("}")[2]
        self._count(name)
        if not self._signed(envelope):
            return _fault(self.auth_status, "Sender", "NotAuthorized", "Sender not authorized")
        token = "" if operation is None else operation.findtext(f"{_TRT}ProfileToken", "")
        media = f"{self.base_url}/onvif/media_service"
        if request.path == "/onvif/device_service" and name == "GetCapabilities":
            return _answer(
                "<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Media>"
                f"<tt:XAddr>{media}</tt:XAddr><tt:StreamingCapabilities>"
                "<tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP>"
                "<tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP></tt:StreamingCapabilities>"
                "</tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse>"
            )
        if request.path == "/onvif/media_service" and name == "GetProfiles":
            profiles = "".join(
                f'<trt:Profiles token="{token}" fixed="true"><tt:Name>{token}</tt:Name>'
                f"{_VIDEO_ENCODER if video else ''}</trt:Profiles>"
                for token, video in self.profiles
            )
            return _answer(f"<trt:GetProfilesResponse>{profiles}</trt:GetProfilesResponse>")
        uris = {"GetSnapshotUri": self.snapshot_uri, "GetStreamUri": self.stream_uri}
        if request.path == "/onvif/media_service" and name in uris:
            if token not in (known for known, _ in self.profiles):
                return _fault(400, "Sender", "NoProfile", "No such profile")
            uri = uris[name]
            if uri is None:
                return _fault(500, "Receiver", "ActionNotSupported", "Not supported")
            return _answer(
                f"<trt:{name}Response><trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri>"
                "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
                "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot>"
                f"<tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:{name}Response>"
            )
        return _fault(500, "Receiver", "ActionNotSupported", "Not supported")

    def _signed(self, envelope: ElementTree.Element) -> bool:
        """A UsernameToken for our user whose digest is SHA-1(nonce + created + password)."""
        token = envelope.find(f".//{_WSSE}UsernameToken")
        if token is None:
            return False
        nonce = base64.b64decode(token.findtext(f"{_WSSE}Nonce") or "")
        created = token.findtext(f"{_WSU}Created") or ""
        digest = hashlib.sha1(nonce + (created + self.password).encode()).digest()
        return (
            token.findtext(f"{_WSSE}Username") == self.user
            and token.findtext(f"{_WSSE}Password") == base64.b64encode(digest).decode()
        )

    def _respond(self) -> None:
        scopes = [
            Scope("onvif://www.onvif.org/type/video_encoder"),
            Scope(f"onvif://www.onvif.org/name/{quote(self.name)}"),
            Scope(f"onvif://www.onvif.org/hardware/{quote(self.hardware)}"),
        ]
        service = Service([NVT], scopes, [self.device_url], self.endpoint, 0)
        while not self._stop.is_set():
            for sock in self._sockets:
                try:
                    data, peer = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                probe = parseSOAPMessage(data, peer[0])
                if probe is None or probe.getAction() != NS_ACTION_PROBE:
                    continue
                self._count("Probe")
                wanted = {qname.getFullname() for qname in probe.getTypes()}
                if wanted and NVT.getFullname() not in wanted:
                    continue
                answer = constructProbeMatch([service], probe.getMessageId())
                sock.sendto(createSOAPMessage(answer).encode(), peer)


def _answer(body: str) -> Reply:
    return Reply(200, _ENVELOPE.format(body).encode(), _SOAP)


def _fault(status: int, code: str, subcode: str, reason: str) -> Reply:
    return Reply(status, _ENVELOPE.format(_FAULT.format(code, subcode, reason)).encode(), _SOAP)
