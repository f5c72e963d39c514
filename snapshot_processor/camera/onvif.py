"""An ONVIF camera's snapshot and stream URIs, from its media service (onvif-zeep-async).

The SOAP calls, in order, each with a WS-Security UsernameToken (password digest):

1. device service ``http://host:port/onvif/device_service``: ``GetCapabilities`` (category
   Media), for the media service's address (not ``GetServices``, which older cameras lack);
2. media service: ``GetProfiles``; the first profile with a video encoder configuration is
   used, else the first profile;
3. media service: ``GetSnapshotUri``, then ``GetStreamUri`` (RTP-Unicast over RTSP).

The camera's clock is not asked for (``GetSystemDateAndTime``): one set far from ours may
refuse the digest's timestamp, which reads as wrong credentials. Nothing is cached here: the
caller keeps the answer. Each call runs the async library in an event loop of its own and
closes it, so any thread without a running loop may call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pylib.observe.logs import printable
from pylib.observe.redact import register_secret
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraConnectionError,
    CameraError,
    CameraHTTPError,
    CameraTimeoutError,
    CameraVendorError,
)
from snapshot_processor.camera.spec import safe_url

__all__ = ["MediaUris", "media_uris"]

# Both log whole SOAP messages at DEBUG: WS-Security digests, and answers that may carry
# credentials in URIs.
for _name in ("onvif", "zeep"):
    logging.getLogger(_name).setLevel(logging.INFO)


@dataclass(frozen=True)
class MediaUris:
    """One media profile's URIs as the camera gives them (they may hold credentials: the repr
    masks them); ``None`` where the camera has none."""

    snapshot: str | None
    stream: str | None
    profile: str

    def __repr__(self) -> str:
        snapshot, stream = (safe_url(uri) if uri else uri for uri in (self.snapshot, self.stream))
        return f"MediaUris(snapshot={snapshot!r}, stream={stream!r}, profile={self.profile!r})"


@dataclass
class _Step:
    """The call under way, named if it fails."""

    call: str
    url: str


def media_uris(
    host: str, port: int, user: str, password: str, *, timeout: float, camera: str = ""
) -> MediaUris:
    """The snapshot URI (http or https) and RTSP stream URI of the camera's first video
    profile, all calls within ``timeout`` seconds. Raises a :class:`CameraError`: wrong
    credentials, no connection, no answer in time, HTTP errors, no profile, a malformed
    answer, or neither URI given."""
    register_secret(password)  # log redaction masks it, should a library line hold it
    netloc = f"[{host}]" if ":" in host else host
    step = _Step("GetCapabilities", f"http://{netloc}:{port}/onvif/device_service")
    onvif = _onvif()  # before the clock starts: the first import takes half a second
    try:
        return asyncio.run(asyncio.wait_for(_ask(onvif, step, user, password, camera), timeout))
    except Exception as exc:
        error = _camera_error(exc, step, timeout, camera)
    # Raised outside the except: the library's exception, whose text may hold credentials,
    # is neither this one's cause nor its context.
    raise error


def _onvif() -> Any:
    """The onvif package, imported on first use: it costs half a second, and its import calls
    ``logging.basicConfig()``, which a handler already on the root logger makes a no-op (else
    it would add one that bypasses redaction)."""
    root, guard = logging.getLogger(), logging.NullHandler()
    root.addHandler(guard)
    try:
        import onvif.client
        import onvif.util
    finally:
        root.removeHandler(guard)
    return onvif


async def _ask(onvif: Any, step: _Step, user: str, password: str, camera: str) -> MediaUris:
    wsdl = Path(onvif.__file__).parent / "wsdl"
    opened: list[Any] = []

    async def service(kind: str, url: str) -> Any:
        # ONVIFService, not ONVIFCamera: the camera class pops http_proxy and https_proxy
        # from os.environ, for the whole process.
        info = onvif.SERVICES[kind]
        made = onvif.ONVIFService(
            url,
            user,
            password,
            str(wsdl / info["wsdl"]),
            no_cache=True,  # else a SQLite file in the user's cache folder, for bundled WSDLs
            binding_name=f"{{{info['ns']}}}{info['binding']}",
        )
        opened.append(made)
        await made.setup()
        return made

    try:
        device = await service("devicemgmt", step.url)
        capabilities = await device.GetCapabilities({"Category": "Media"})
        xaddr = onvif.util.normalize_url(getattr(capabilities.Media, "XAddr", None))
        if not xaddr:
            raise _vendor_error(step, camera, "the camera names no media service")
        step.call, step.url = "GetProfiles", printable(safe_url(xaddr))
        media = await service("media", xaddr)
        profiles = list(await media.GetProfiles() or [])
        if not profiles:
            raise _vendor_error(step, camera, "the camera has no media profile")
        chosen = next((p for p in profiles if p.VideoEncoderConfiguration), profiles[0])
        token = str(chosen.token)
        step.call = "GetSnapshotUri"
        snapshot = await _uri(media.GetSnapshotUri({"ProfileToken": token}), onvif)
        step.call = "GetStreamUri"
        setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
        stream = await _uri(
            media.GetStreamUri({"StreamSetup": setup, "ProfileToken": token}), onvif
        )
    finally:
        for made in opened:
            await made.close()
    uris = MediaUris(
        snapshot=snapshot if snapshot and snapshot.startswith(("http://", "https://")) else None,
        stream=stream if stream and stream.startswith(("rtsp://", "rtsps://")) else None,
        profile=token,
    )
    if uris.snapshot is None and uris.stream is None:
        words = f"profile {printable(token)!r} has neither a snapshot nor an RTSP stream URI"
        raise _vendor_error(step, camera, words)
    return uris


async def _uri(call: Any, onvif: Any) -> str | None:
    """The URI a GetSnapshotUri or GetStreamUri answers; None if the camera refuses the call
    for a reason other than credentials (ActionNotSupported, say)."""
    from zeep.exceptions import Fault

    try:
        answer = await call
    except Fault as exc:
        if onvif.util.is_auth_error(exc):
            raise
        return None
    uri = onvif.util.normalize_url(getattr(answer, "Uri", None))
    return str(uri) if uri else None


def _camera_error(exc: Exception, step: _Step, timeout: float, camera: str) -> CameraError:
    """``exc`` as the matching :class:`CameraError`, in our words."""
    import aiohttp
    from zeep.exceptions import Fault, TransportError

    if isinstance(exc, CameraError):
        exc.__context__ = None
        return exc.with_traceback(None)
    where = f"{camera}: ONVIF {step.call} at {step.url}"
    if isinstance(exc, TimeoutError):  # ours (wait_for) or aiohttp's
        return CameraTimeoutError(f"{where}: no answer within {timeout} s", camera=camera)
    auth = f"{where}: user name or password refused"
    if isinstance(exc, Fault):
        if _onvif().util.is_auth_error(exc):
            return CameraAuthError(auth, camera=camera)
        codes = [getattr(code, "localname", str(code)) for code in exc.subcodes or []]
        fault = printable(codes[-1] if codes else exc.code or "without a code")
        return _vendor_error(step, camera, f"the camera answered fault {fault}")
    if isinstance(exc, TransportError):
        status = int(exc.status_code or 0)
        if status in (401, 403):
            return CameraAuthError(f"{auth} (HTTP {status})", camera=camera)
        if not 200 <= status < 300:
            return CameraHTTPError(f"{where}: HTTP {status}", status=status, camera=camera)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return CameraConnectionError(f"{where}: {_connection_problem(exc)}", camera=camera)
    return _vendor_error(step, camera, f"malformed answer ({type(exc).__name__})")


def _vendor_error(step: _Step, camera: str, words: str) -> CameraVendorError:
    return CameraVendorError(f"{camera}: ONVIF {step.call} at {step.url}: {words}", camera=camera)


def _connection_problem(exc: Exception) -> str:
    cause = getattr(exc, "os_error", exc)  # aiohttp's ClientConnectorError wraps it
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the host ({cause.strerror})"
    number = getattr(cause, "errno", None)
    if number:  # asyncio's own text is "Connect call failed" whatever the reason
        return os.strerror(number).lower()
    return "the connection failed or was closed"
