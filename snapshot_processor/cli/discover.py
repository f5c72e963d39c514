"""``discover``: the ONVIF cameras on the local network (WS-Discovery), their media URIs when
``ONVIF_PASSWORD`` is set, and the configuration lines for each, ready to paste."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pylib.observe.logs import printable
from pylib.observe.redact import redact, register_secret
from snapshot_processor.camera.errors import CameraError
from snapshot_processor.camera.onvif import media_uris
from snapshot_processor.cli.common import EXIT_CONFIG, EXIT_FAILED, CommandError, command_logging

if TYPE_CHECKING:
    from snapshot_processor.camera.discovery import FoundCamera

HELP = "list the ONVIF cameras on the local network and the lines that configure them"
# Not an argument: the process list shows those to every user of the machine.
PASSWORD_ENV = "ONVIF_PASSWORD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds to wait for answers, and for each camera's media URIs (default %(default)s)",
    )
    parser.add_argument(
        "--user",
        default="admin",
        help=f"the cameras' user name (default %(default)s); with its password in ${PASSWORD_ENV} "
        "each camera's snapshot and stream URIs are read too",
    )
    parser.add_argument(
        "--address",
        default=None,
        metavar="HOST[:PORT]",
        help="ask this one host by unicast (port 3702 by default), where multicast is dropped",
    )


def run(args: argparse.Namespace) -> int:
    password = os.environ.get(PASSWORD_ENV, "")
    register_secret(password)
    with command_logging():
        try:
            # WS-Discovery's library only here: every other command does without it.
            from snapshot_processor.camera.discovery import discover

            cameras = discover(args.timeout, address=args.address)
        except ValueError as exc:
            raise CommandError(f"--address {exc}", EXIT_CONFIG) from None
        except OSError as exc:
            raise CommandError(
                f"cannot send the WS-Discovery probe: {exc.strerror or exc}", EXIT_FAILED
            ) from None
        if not cameras:
            asked = printable(args.address) if args.address else "multicast"
            raise CommandError(
                f"no ONVIF camera answered within {args.timeout:g} s ({asked}); check that "
                "this machine is on the cameras' network, that multicast reaches them (else "
                "try --address), and that ONVIF is enabled on the cameras",
                EXIT_FAILED,
            )
        print("# ONVIF cameras found: renumber OUTPUT_n to follow the outputs you have.")
        if not password:
            print(f"# Set {PASSWORD_ENV} to read each camera's snapshot and stream URIs too.")
        locations: set[str] = set()
        for number, camera in enumerate(cameras, 1):
            location = printable(camera.name) if camera.name else f"camera-{number}"
            location = f"{location} {number}" if location in locations else location
            locations.add(location)
            print()
            for line in _lines(number, camera, location, args.user, password, args.timeout):
                print(line)
    return 0


def _lines(
    number: int, camera: FoundCamera, location: str, user: str, password: str, timeout: float
) -> Iterator[str]:
    xaddr = urlsplit(camera.xaddrs[0])
    port = xaddr.port or (443 if xaddr.scheme == "https" else 80)
    hardware = f" ({printable(camera.hardware)})" if camera.hardware else ""
    yield f"# {printable(camera.address)}: {location}{hardware}, {_shown(camera.xaddrs[0])}"
    if password:
        try:
            uris = media_uris(
                camera.address, port, user, password, timeout=timeout, camera=location
            )
        except CameraError as exc:
            yield f"# no media URIs: {printable(exc)}"
        else:
            yield f"# snapshot URI: {_shown(uris.snapshot)} (profile {printable(uris.profile)})"
            yield f"# stream URI: {_shown(uris.stream)}"
    prefix = f"OUTPUT_{number}_"
    yield f"{prefix}LOCATION = {json.dumps(location, ensure_ascii=False)}"
    yield f'{prefix}TYPE = "camera"'
    yield f'{prefix}VENDOR = "onvif"'
    yield f"{prefix}ADDRESS = {json.dumps(f'{printable(camera.address)}:{port}')}"
    yield f"{prefix}USER = {json.dumps(printable(user), ensure_ascii=False)}"
    yield f"# {prefix}PASSWORD: put it in SECRETS_DIR/{prefix}PASSWORD or the environment"


def _shown(uri: str | None) -> str:
    """A URI as the camera gave it, credentials in it masked."""
    return "none" if uri is None else printable(redact(uri))
