"""What the commands share: exit codes, the one-line error, settings, the broker, cameras."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pika
from pika.adapters.blocking_connection import BlockingChannel

from pylib.amqp.params import CONNECTION_ERRORS, close_quietly, connect, describe, explain
from pylib.config.settings import ConfigError
from pylib.observe.logs import RedactingFilter, RedactingFormatter, printable
from snapshot_processor import config
from snapshot_processor.camera.networks import CameraNetworks
from snapshot_processor.camera.registry import CameraRegistry
from snapshot_processor.config import Device, Settings
from snapshot_processor.contract import exchanges, feature

# Exit codes, as the README's "Command line" section lists them.
EXIT_FAILED = 1  # run: failed while running; others: a file could not be written
EXIT_CONFIG = 2  # the configuration or the arguments are invalid (unknown camera too)
EXIT_START = 3  # run: something needed at start is missing or in use
EXIT_BUSY = 4  # another daemon runs on the same data root
EXIT_CAMERA = 5  # the camera gave no snapshot
EXIT_BROKER = 6  # the broker cannot be reached, or refused what was asked
EXIT_NO_EVENT = 7  # the trigger reached no daemon, or no event came within the timeout


class CommandError(Exception):
    """A command failed: one line for the user, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def load_settings(config_file: Path | None) -> Settings:
    """The settings, or :class:`CommandError` (exit 2) naming the first problem."""
    try:
        return config.load(config_file=config_file)
    except ConfigError as exc:
        more = len(exc.problems) - 1
        extra = f" (and {more} more: see check-config)" if more > 0 else ""
        raise CommandError(f"configuration: {exc.problems[0]}{extra}", EXIT_CONFIG) from None


def find_camera(settings: Settings, name: str) -> Device:
    """The camera output named ``name`` (its key, any case), or exit 2 naming the choices."""
    wanted = name.strip().lower()
    for device in settings.cameras:
        if device.key.strip().lower() == wanted:
            return device
    known = ", ".join(f"'{printable(device.key)}'" for device in settings.cameras) or "none"
    raise CommandError(
        f"no camera output named '{printable(name)}'; configured: {known}", EXIT_CONFIG
    )


@contextmanager
def command_logging(level: int = logging.WARNING) -> Iterator[None]:
    """Warnings (a camera retried, say) to stderr, redacted, while a command runs; pika's
    own narration is held back, since the command says in one line what failed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.setLevel(level)
    root, pika_logger = logging.getLogger(), logging.getLogger("pika")
    pika_level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        pika_logger.setLevel(pika_level)


def camera_registry(settings: Settings) -> CameraRegistry:
    """The configured cameras, reached as the daemon's fetches reach them (timeout, retries,
    ``CAMERA_NETWORKS``), without its breakers' history."""
    section = settings.camera
    return CameraRegistry(
        settings.cameras,
        timeout=section.timeout,
        retries=section.retries,
        networks=CameraNetworks(section.networks),
    )


def broker_params(settings: Settings, role: str) -> list[pika.ConnectionParameters]:
    return feature.params(settings, f"cli {role}")


@contextmanager
def broker_channel(settings: Settings, role: str) -> Iterator[BlockingChannel]:
    """A channel with both exchanges declared exactly as the other services do; exit 6
    with the reason when the broker cannot be reached or refuses."""
    params = broker_params(settings, role)
    try:
        connection = connect(params)
    except CONNECTION_ERRORS as exc:
        raise CommandError(
            f"cannot reach the broker at {describe(params)}: {explain(exc)}", EXIT_BROKER
        ) from None
    try:
        try:
            channel = connection.channel()
            exchanges.declare_exchanges(channel, settings)
        except CONNECTION_ERRORS as exc:
            raise CommandError(f"the broker refused: {explain(exc)}", EXIT_BROKER) from None
        try:
            yield channel
        except CONNECTION_ERRORS as exc:
            raise CommandError(
                f"the broker connection failed: {explain(exc)}", EXIT_BROKER
            ) from None
    finally:
        close_quietly(connection)
