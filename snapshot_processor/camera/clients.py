"""One client per camera vendor, and :func:`make_client` to pick the right one."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

from requests.auth import AuthBase

from snapshot_processor.camera.base import CameraClient, Reply, Request
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraBadImageError,
    CameraConnectionError,
    CameraError,
    CameraHTTPError,
    CameraVendorError,
)
from snapshot_processor.camera.jpeg import JPEG_SOI
from snapshot_processor.camera.networks import AddressRefusedError, CameraNetworks
from snapshot_processor.camera.onvif import media_uris
from snapshot_processor.camera.rtsp import RtspClient
from snapshot_processor.camera.spec import CameraSpec, Still, safe_url
from snapshot_processor.camera.transport import basic_auth, digest_auth

__all__ = [
    "DahuaClient",
    "FoscamClient",
    "GenericClient",
    "HikvisionClient",
    "OnvifClient",
    "ReolinkClient",
    "make_client",
    "status_call",
]

log = logging.getLogger(__name__)

FOSCAM_RESULTS: dict[int, str] = {
    0: "success",
    -1: "bad request (malformed command or parameters)",
    -2: "wrong user name or password",
    -3: "access denied",
    -4: "command failed on the camera",
    -5: "camera timed out",
}
_FOSCAM_AUTH_CODES = frozenset({-2, -3})
_FOSCAM_TRANSIENT_CODES = frozenset({-4, -5})  # busy or slow: worth another try
_FOSCAM_RESULT = re.compile(rb"<result>\s*(-?\d+)\s*</result>")

_REOLINK_AUTH_CODES = frozenset({-6, -7})  # rspCodes for "log in" / "login failed"
_REOLINK_AUTH_WORDS = ("login", "password")

_DAHUA_FIELD = re.compile(rb"(?m)^[A-Za-z][\w.]*=")


class FoscamClient(CameraClient):
    """Foscam HD: ``CGIProxy.fcgi?cmd=snapPicture2``, credentials in the query; errors come
    back as ``<CGI_Result><result>N</result>`` with HTTP 200."""

    vendor = "foscam"
    path = "/cgi-bin/CGIProxy.fcgi"
    status_call = "CGIProxy.fcgi?cmd=getDevState"
    secret_query_keys = frozenset({"pwd"})

    def _query(self, cmd: str = "snapPicture2") -> list[tuple[str, str]]:
        return [("cmd", cmd), ("usr", self._spec.user), ("pwd", self._spec.password)]

    def _status_request(self) -> Request:
        return self._build_request(self.path, self._query("getDevState"))

    def _check_status_body(self, reply: Reply, request: Request) -> None:
        match = _FOSCAM_RESULT.search(reply.body[:4096])
        if match is None:
            raise CameraVendorError(
                f"{self.key}: answer without a CGI result (GET {request.shown})",
                camera=self.key,
            )
        code = int(match.group(1))
        if code != 0:
            self._raise_result(code, request)

    def _check_vendor_body(self, reply: Reply, request: Request) -> None:
        if reply.body.startswith(JPEG_SOI):
            return
        match = _FOSCAM_RESULT.search(reply.body[:4096])
        if match is None:
            return
        code = int(match.group(1))
        if code == 0:
            raise CameraBadImageError(
                f"{self.key}: camera reported success but sent no image (GET {request.shown})",
                camera=self.key,
            )
        self._raise_result(code, request)

    def _raise_result(self, code: int, request: Request) -> NoReturn:
        words = FOSCAM_RESULTS.get(code, "unknown error")
        message = f"{self.key}: camera reported {code}: {words} (GET {request.shown})"
        if code in _FOSCAM_AUTH_CODES:
            raise CameraAuthError(message, camera=self.key)
        raise CameraVendorError(
            message, code=code, camera=self.key, retryable=code in _FOSCAM_TRANSIENT_CODES
        )


class HikvisionClient(CameraClient):
    """Hikvision ISAPI: ``/ISAPI/Streaming/channels/101/picture`` with HTTP digest auth."""

    vendor = "hikvision"
    path = "/ISAPI/Streaming/channels/101/picture"
    status_call = "/ISAPI/System/deviceInfo"

    def _make_auth(self) -> AuthBase | None:
        return digest_auth(self._spec.user, self._spec.password)

    def _status_request(self) -> Request:
        return self._build_request("/ISAPI/System/deviceInfo", [])

    def _check_status_body(self, reply: Reply, request: Request) -> None:
        if b"<DeviceInfo" not in reply.body[:4096]:
            raise CameraVendorError(
                f"{self.key}: answer is no DeviceInfo document (GET {request.shown})",
                camera=self.key,
            )


class DahuaClient(CameraClient):
    """Dahua and Amcrest: ``/cgi-bin/snapshot.cgi?channel=1`` with HTTP digest auth."""

    vendor = "dahua"
    path = "/cgi-bin/snapshot.cgi"
    status_call = "magicBox.cgi?action=getSystemInfo"

    def _make_auth(self) -> AuthBase | None:
        return digest_auth(self._spec.user, self._spec.password)

    def _query(self) -> list[tuple[str, str]]:
        return [("channel", "1")]

    def _status_request(self) -> Request:
        return self._build_request("/cgi-bin/magicBox.cgi", [("action", "getSystemInfo")])

    def _check_status_body(self, reply: Reply, request: Request) -> None:
        if _DAHUA_FIELD.search(reply.body[:4096]) is None:
            raise CameraVendorError(
                f"{self.key}: answer holds no system info (GET {request.shown})",
                camera=self.key,
            )


class ReolinkClient(CameraClient):
    """Reolink: ``/cgi-bin/api.cgi?cmd=Snap``, credentials in the query; errors come back
    as JSON (``[{"code": 1, "error": {"rspCode": -6, "detail": ...}}]``), usually HTTP 200."""

    vendor = "reolink"
    path = "/cgi-bin/api.cgi"
    status_call = "api.cgi?cmd=GetDevInfo"
    secret_query_keys = frozenset({"password"})

    def _query(self) -> list[tuple[str, str]]:
        return [
            ("cmd", "Snap"),
            ("channel", "0"),
            ("rs", secrets.token_hex(8)),  # so no cache answers with an old frame
            ("user", self._spec.user),
            ("password", self._spec.password),
        ]

    def _status_request(self) -> Request:
        return self._build_request(
            self.path,
            [
                ("cmd", "GetDevInfo"),
                ("user", self._spec.user),
                ("password", self._spec.password),
            ],
        )

    def _check_status_body(self, reply: Reply, request: Request) -> None:
        if reply.body.lstrip()[:1] not in (b"[", b"{"):
            raise CameraVendorError(
                f"{self.key}: answer is not the API's JSON (GET {request.shown})",
                camera=self.key,
            )
        data: Any = None
        with contextlib.suppress(ValueError):
            data = json.loads(reply.body)
        item = data[0] if isinstance(data, list) and data else data
        if isinstance(item, dict) and item.get("code") == 0 and "value" in item:
            return
        self._check_vendor_body(reply, request)  # raises the camera's error, if it sent one
        raise CameraVendorError(
            f"{self.key}: answer is not a GetDevInfo result (GET {request.shown})",
            camera=self.key,
        )

    def _check_vendor_body(self, reply: Reply, request: Request) -> None:
        if reply.body.lstrip()[:1] not in (b"[", b"{"):
            return
        data: Any = None
        with contextlib.suppress(ValueError):  # raised below: no JSON error as context
            data = json.loads(reply.body)
        if data is None:
            raise CameraBadImageError(
                f"{self.key}: camera answered malformed JSON instead of an image "
                f"(GET {request.shown})",
                camera=self.key,
            )
        item = data[0] if isinstance(data, list) and data else data
        error = item.get("error") if isinstance(item, dict) else None
        code: int | None = None
        detail = ""
        if isinstance(error, dict):
            raw_code = error.get("rspCode")
            code = raw_code if isinstance(raw_code, int) else None
            detail = self._scrub(str(error.get("detail", "")))[:120]
        words = f"rspCode {code}" if code is not None else "an error"
        message = f"{self.key}: camera reported {words}"
        message += f": {detail}" if detail else " instead of an image"
        message += f" (GET {request.shown})"
        if code in _REOLINK_AUTH_CODES or any(w in detail.lower() for w in _REOLINK_AUTH_WORDS):
            raise CameraAuthError(message, camera=self.key)
        raise CameraVendorError(message, code=code, camera=self.key)


class GenericClient(CameraClient):
    """Any camera by URL, ``{host}``, ``{port}``, ``{user}`` and ``{password}`` filled in."""

    vendor = "generic"

    def _make_auth(self) -> AuthBase | None:
        if self._spec.auth == "basic":
            return basic_auth(self._spec.user, self._spec.password)
        if self._spec.auth == "digest":
            return digest_auth(self._spec.user, self._spec.password)
        return None

    def _request(self) -> Request:
        template = self._spec.url or ""
        host = f"[{self._spec.host}]" if ":" in self._spec.host else self._spec.host
        url = (  # str.replace, not str.format: a URL may contain other braces
            template.replace("{host}", host)
            .replace("{port}", str(self._spec.port))
            .replace("{user}", quote(self._spec.user, safe=""))
            .replace("{password}", quote(self._spec.password, safe=""))
        )
        return Request(url=url, shown=self._scrub(safe_url(url)))


class OnvifClient(CameraClient):
    """An ONVIF camera: its media service names the snapshot URI (fetched with digest auth)
    or, when it has none or ``RTSP_MODE`` is set, the stream URI. The answer is kept until
    a snapshot from it fails for another reason than the camera's credentials or timeout."""

    vendor = "onvif"
    status_call = "a snapshot (ONVIF GetProfiles first, until it answers)"
    # Set by the registry for a camera whose address came with a trigger: the URIs it
    # names are bounded by CAMERA_NETWORKS too, and reached at the addresses checked.
    networks: CameraNetworks | None = None

    def __init__(
        self, spec: CameraSpec, on_change: Callable[[CameraError | None], None] | None = None
    ) -> None:
        super().__init__(spec)
        self._on_change = on_change
        self._source: CameraClient | None = None  # guarded by the base's lock

    def prepare(self) -> None:
        """Ask the media service now (a warm stream opens at once), not at the first snapshot."""
        with self._lock:
            if self._source is None and not self.closed:
                with contextlib.suppress(CameraError):
                    self._adopt(self._resolve())

    def _attempt(self, status: Request | None = None) -> bytes | Still | CameraError:
        try:
            if self._source is None:
                self._adopt(self._resolve())
        except CameraError as exc:
            return exc.with_traceback(None)
        source = self._source
        assert source is not None
        outcome = source._attempt(status)
        # The camera may have moved its URIs: asked again next time. Not for a warm stream,
        # which opens again by itself and keeps its pre-trigger stills meanwhile.
        moved = isinstance(outcome, CameraVendorError | CameraHTTPError | CameraBadImageError)
        if moved and not source.streaming:
            self._source = None
            source.close(wait=False)
        return outcome

    def _resolve(self) -> CameraClient:
        """A client of the URI the media service names."""
        uris = media_uris(
            self._spec.host,
            self._spec.port,
            self._spec.user,
            self._spec.password,
            timeout=self._spec.timeout,
            camera=self.key,
        )
        stream_first = self._spec.rtsp_mode != "off"
        if uris.stream and (stream_first or not uris.snapshot):
            url, vendor = uris.stream, "rtsp"
            mode = self._spec.rtsp_mode if stream_first else "on_demand"
        elif uris.snapshot:
            url, vendor, mode = uris.snapshot, "generic", "off"
        else:
            raise CameraVendorError(
                f"{self.key}: ONVIF: the camera names neither a snapshot nor a stream URI",
                camera=self.key,
            )
        log.info("%s: ONVIF names %s", self.key, safe_url(url))
        spec = replace(
            self._spec, vendor=vendor, url=url, auth="digest", rtsp_mode=mode, connect_to=()
        )
        if self.networks is not None:
            spec = self._bounded(spec, url)
        return make_client(spec, self._on_change)

    def _bounded(self, spec: CameraSpec, url: str) -> CameraSpec:
        assert self.networks is not None
        parts = urlsplit(url)
        host = parts.hostname or ""
        default = 554 if parts.scheme.startswith("rtsp") else 443 if parts.scheme == "https" else 80
        try:
            addresses = self.networks.resolve(host, parts.port or default)
        except AddressRefusedError:
            raise CameraVendorError(
                f"{self.key}: ONVIF names {safe_url(url)}, outside CAMERA_NETWORKS: not asked",
                camera=self.key,
            ) from None
        except (OSError, UnicodeError):
            raise CameraConnectionError(
                f"{self.key}: ONVIF names a host that does not resolve ({safe_url(url)})",
                camera=self.key,
            ) from None
        return replace(spec, host=host, connect_to=addresses)

    def _adopt(self, source: CameraClient) -> None:
        # Kept first, then closed if this client was closed meanwhile: ``close`` sets its flag
        # before it looks for a source, so one of the two closes it.
        self._source = source
        if self.closed:
            source.close(wait=False)

    def before(self, moment: float) -> list[Still]:
        source = self._source
        return [] if source is None else source.before(moment)

    @property
    def streaming(self) -> bool:
        source = self._source
        return source is not None and source.streaming

    def close(self, *, wait: bool = True) -> None:
        super().close(wait=wait)
        if (source := self._source) is not None:
            source.close(wait=wait)

    def join(self, timeout: float) -> None:
        if (source := self._source) is not None:
            source.join(timeout)


# The vendors by name: OUTPUT_n_VENDOR accepts these names and no others.
_CLIENTS: dict[str, type[CameraClient]] = {
    cls.vendor: cls
    for cls in (
        FoscamClient,
        HikvisionClient,
        DahuaClient,
        ReolinkClient,
        GenericClient,
        RtspClient,
        OnvifClient,
    )
}
VENDORS = tuple(_CLIENTS)


def make_client(
    spec: CameraSpec, on_change: Callable[[CameraError | None], None] | None = None
) -> CameraClient:
    """Return the client for ``spec``; close it when done. ``on_change`` hears a warm RTSP
    stream's changes of state."""
    if spec.vendor == "onvif":
        return OnvifClient(spec, on_change)
    if spec.rtsp_mode != "off":
        return RtspClient(spec, on_change)
    try:
        cls = _CLIENTS[spec.vendor]
    except KeyError:
        raise ValueError(f"{spec.key}: unknown camera vendor {spec.vendor!r}") from None
    return cls(spec)


def status_call(spec: CameraSpec) -> str:
    """What a probe asks of the camera (see :meth:`CameraClient.probe`)."""
    vendor = "rtsp" if spec.rtsp_mode != "off" and spec.vendor != "onvif" else spec.vendor
    return _CLIENTS[vendor].status_call
