"""Command line: ``snapshot-processor <command>``, each one entry of :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pylib.config.settings import ConfigError
from pylib.observe.logs import setup_logging
from pylib.observe.sentry import close_sentry, init_sentry
from pylib.runtime import dataroot
from pylib.runtime.daemon import EXIT_START, StartError
from snapshot_processor import config
from snapshot_processor.app import App
from snapshot_processor.cli import (
    dead_triggers,
    detect_worker,
    detection,
    discover,
    drive,
    events,
    healthcheck,
    online,
    outbox,
    simulate,
    snap,
    trigger,
    uploads,
)
from snapshot_processor.cli.common import EXIT_BUSY, EXIT_CONFIG, CommandError, command_logging
from snapshot_processor.contract.settings import cluster_warnings
from snapshot_processor.detection.settings import remote_detection_warnings

log = logging.getLogger("snapshot_processor")

# Exit codes: see common.py and the README's "Command line" section.
__all__ = ["COMMANDS", "EXIT_BUSY", "EXIT_CONFIG", "Command", "main"]


@dataclass(frozen=True)
class Command:
    """One command; ``passes_rest``: the arguments after its name go unparsed to ``args.rest``
    (its own ``--help`` included)."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    passes_rest: bool = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapshot-processor",
        description="The snapshot daemon and its everyday commands; "
        "'snapshot-processor COMMAND --help' describes each.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML settings file (default: ${config.CONFIG_ENV}, else {config.DEFAULT_CONFIG_FILE} if present)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            add_help=not command.passes_rest,
        )
        if command.add_arguments is not None:
            command.add_arguments(sub)
    return parser


def check_config(args: argparse.Namespace) -> int:
    """Print every configuration problem; 0 when there are none."""
    unknown = config.unknown_variables()
    try:
        settings = config.load(config_file=args.config)
    except ConfigError as exc:
        print(f"configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in [*exc.problems, *unknown]:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    unusable = dataroot.check_writable(settings.snapshots_root_dir)
    if unusable is not None:
        print(f"SNAPSHOTS_ROOT_DIR: {unusable}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"configuration OK: device {settings.device_name}, exchange {settings.broker.exchange}, "
        f"{len(settings.cameras)} camera output(s), {len(settings.upload_cameras)} camera input(s)"
    )
    for warning in [
        *unknown,
        *config.container_warnings(settings),
        *cluster_warnings(settings.broker),
        *remote_detection_warnings(settings.detection),
    ]:
        print(f"warning: {warning}")
    detection.config_notes(settings)
    drive.service_account_note(settings.storage.drive_on, settings.storage.google_drive_credentials)
    if args.online:
        print("outside systems:")
        with command_logging():
            failed = online.run_checks(settings)
        if failed:
            print(f"{failed} outside system(s) failed", file=sys.stderr)
            return EXIT_CONFIG
    return 0


def _check_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--online",
        action="store_true",
        help="also reach the broker, each camera, the S3 bucket, the Drive folder, 1Password "
        "and Sentry, and say per system what works",
    )


def run(args: argparse.Namespace) -> int:
    """Run the daemon until it is told to stop; returns the exit code."""
    setup_logging()
    try:
        settings = config.load(config_file=args.config)
    except ConfigError as exc:
        for problem in [*exc.problems, *config.unknown_variables()]:
            log.error("configuration: %s", problem)
        return EXIT_CONFIG
    setup_logging(settings.log_level, settings.syslog_address)
    for notice in [
        *config.unknown_variables(),
        *config.container_warnings(settings),
        *cluster_warnings(settings.broker),
        *remote_detection_warnings(settings.detection),
    ]:
        log.warning("%s", notice)
    lock = dataroot.DataRootLock(settings.snapshots_root_dir)
    try:
        warning = dataroot.prepare(settings.snapshots_root_dir)
        if warning:
            log.warning("%s", warning)
        lock.acquire()
        if settings.ingest.ftp_on:
            _check_port("FTP", settings.ingest.ftp_listen_address, settings.ingest.ftp_port)
        _check_port("HTTP", settings.ops.http_bind, settings.ops.http_port)
    except dataroot.DataRootBusyError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_BUSY
    except (dataroot.DataRootError, StartError) as exc:
        log.error("cannot start: %s", exc)
        lock.release()
        return EXIT_START
    init_sentry(
        settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None,
        environment=settings.sentry_environment,
    )
    try:
        app = App(settings)
        try:
            daemon = app.build()
        except StartError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_START
        daemon.install_signal_handlers()
        return daemon.run()
    finally:
        close_sentry()
        lock.release()


def _check_port(what: str, address: str, port: int) -> None:
    if not port:
        return
    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the server will: a port left in TIME_WAIT is free, one with a listener not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as exc:
        raise StartError(
            f"{what} port {address}:{port} cannot be used: {exc.strerror or exc}"
        ) from None


# In the order --help lists them.
COMMANDS: tuple[Command, ...] = (
    Command("run", "run the daemon in the foreground until SIGTERM or SIGINT", run),
    Command(
        "check-config",
        "validate the configuration and list every problem",
        check_config,
        _check_config_arguments,
    ),
    Command("snap", snap.HELP, snap.run, snap.add_arguments),
    Command("discover", discover.HELP, discover.run, discover.add_arguments),
    Command("trigger", trigger.HELP, trigger.run, trigger.add_arguments),
    Command("events", events.HELP, events.run, events.add_arguments),
    Command("outbox", outbox.HELP, outbox.run, outbox.add_arguments),
    Command("dead-triggers", dead_triggers.HELP, dead_triggers.run, dead_triggers.add_arguments),
    Command("uploads", uploads.HELP, uploads.run, uploads.add_arguments),
    Command("detection", detection.HELP, detection.run, detection.add_arguments),
    Command("detect-worker", detect_worker.HELP, detect_worker.run),
    Command("simulate-cameras", simulate.HELP, simulate.run, passes_rest=True),
    Command("drive-auth", drive.AUTH_HELP, drive.run_auth, drive.add_auth_arguments),
    Command("drive-archive", drive.ARCHIVE_HELP, drive.run_archive, drive.add_archive_arguments),
    Command("healthcheck", healthcheck.HELP, healthcheck.run, healthcheck.add_arguments),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: its exit code; a failure is one line on stderr."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    command = next(command for command in COMMANDS if command.name == args.command)
    if rest and not command.passes_rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return command.run(args)
    except CommandError as exc:
        print(f"snapshot-processor {command.name}: {exc}", file=sys.stderr)
        return exc.code
