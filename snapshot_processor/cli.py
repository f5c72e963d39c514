"""Command line: ``snapshot-processor run``, ``check-config``, ``drive-auth`` and ``drive-archive``."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pylib import dataroot
from pylib.daemon import EXIT_START, StartError
from pylib.logs import setup_logging
from pylib.sentry import close_sentry, init_sentry
from pylib.settings import ConfigError
from snapshot_processor import config
from snapshot_processor.app import App
from snapshot_processor.cloud import drive, drive_auth
from snapshot_processor.cloud.drive_archive import DriveArchiveError

log = logging.getLogger("snapshot_processor")

# Exit codes, as the README lists them: 0 stopped as asked; 1 failed while running;
# 2 the configuration is invalid; 3 something needed at start is missing or in use
# (data root, FTP port, outbox); 4 another daemon runs on the same data root.
EXIT_CONFIG = 2
EXIT_BUSY = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snapshot-processor", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML settings file (default: ${config.CONFIG_ENV}, else {config.DEFAULT_CONFIG_FILE} if present)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the daemon in the foreground until SIGTERM or SIGINT")
    commands.add_parser("check-config", help="validate the configuration and list every problem")
    auth = commands.add_parser(
        "drive-auth",
        help="consent to Google Drive access (headless) and write the credentials file",
        description="Prints a consent URL to open in any browser; paste back the "
        "http://127.0.0.1:... address the browser ends on. Writes Google's authorized_user "
        "JSON (mode 0600) for GOOGLE_DRIVE_CREDENTIALS.",
    )
    auth.add_argument(
        "--client-secrets",
        type=Path,
        required=True,
        help='the OAuth client JSON of a "Desktop app" client, from the Google Cloud console',
    )
    auth.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the credentials (default: GOOGLE_DRIVE_CREDENTIALS)",
    )
    auth.add_argument(
        "--scope",
        choices=sorted(drive_auth.SCOPES),
        default="file",
        help="file (default): only what the daemon creates; full: all of your Drive",
    )
    auth.add_argument(
        "--port", type=int, default=None, help="loopback redirect port (default: random)"
    )
    auth.add_argument("--auth-uri", default=None, help="consent page (default: the client file's)")
    auth.add_argument(
        "--token-uri", default=None, help="token endpoint (default: the client file's)"
    )
    commands.add_parser(
        "drive-archive",
        help="move files older than DRIVE_ARCHIVE_AFTER_HOURS into year/month/day Drive folders now",
        description="Files in GOOGLE_DRIVE_FOLDER older than DRIVE_ARCHIVE_AFTER_HOURS move into "
        "YYYY/MM/DD folders under it; starred files stay. Safe to run again or interrupt.",
    )
    return parser


def check_config(config_file: Path | None) -> int:
    """Print every configuration problem; 0 when there are none."""
    try:
        settings = config.load(config_file=config_file)
    except ConfigError as exc:
        print(f"configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    unusable = dataroot.check_writable(settings.snapshots_root_dir)
    if unusable is not None:
        print(f"SNAPSHOTS_ROOT_DIR: {unusable}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"configuration OK: device {settings.device_name}, exchange {settings.rabbitmq_exchange}, "
        f"{len(settings.cameras)} camera output(s), {len(settings.upload_cameras)} camera input(s)"
    )
    if settings.drive_on and settings.google_drive_credentials is not None:
        note = drive.service_account_note(settings.google_drive_credentials)
        if note:
            print(note)
    return 0


def drive_auth_command(args: argparse.Namespace) -> int:
    """``drive-auth``: consent, then write the credentials file; 0 when written."""
    setup_logging(logging.WARNING)
    output = args.output
    if output is None:
        try:
            output = config.load(config_file=args.config).google_drive_credentials
        except ConfigError as exc:
            print(
                f"drive-auth: give --output (the configuration is unusable: {exc.problems[0]})",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if output is None:
            print("drive-auth: give --output or set GOOGLE_DRIVE_CREDENTIALS", file=sys.stderr)
            return EXIT_CONFIG
    try:
        drive_auth.run(
            args.client_secrets,
            output,
            scope=args.scope,
            port=args.port,
            auth_uri=args.auth_uri,
            token_uri=args.token_uri,
        )
    except drive_auth.DriveAuthError as exc:
        print(f"drive-auth: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"drive-auth: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def drive_archive_command(config_file: Path | None, now: float | None = None) -> int:
    """``drive-archive``: archive now and print what moved; 0 when it completed."""
    setup_logging(logging.WARNING)
    try:
        settings = config.load(config_file=config_file)
    except ConfigError as exc:
        print(f"drive-archive: configuration: {exc.problems[0]}", file=sys.stderr)
        return EXIT_CONFIG
    if not settings.google_drive_folder or settings.google_drive_credentials is None:
        print("drive-archive: Drive is not configured (GOOGLE_DRIVE_FOLDER)", file=sys.stderr)
        return EXIT_CONFIG
    destination = drive.DriveDestination(
        settings.google_drive_folder,
        settings.google_drive_credentials,
        settings.google_drive_api_url,
        settings.drive_archive_after_hours,
    )
    try:
        summary = destination.archive(time.time() if now is None else now, create_folder=False)
    except DriveArchiveError as exc:
        for line in exc.summary.lines()[:-1]:
            print(line)
        print(f"drive-archive: {exc}; run it again to go on", file=sys.stderr)
        return 1
    finally:
        destination.close()
    for line in summary.lines():
        print(line)
    return 0


def run(config_file: Path | None) -> int:
    """Run the daemon until it is told to stop; returns the exit code."""
    setup_logging()
    try:
        settings = config.load(config_file=config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("configuration: %s", problem)
        return EXIT_CONFIG
    setup_logging(settings.log_level, settings.syslog_address)
    lock = dataroot.DataRootLock(settings.snapshots_root_dir)
    try:
        warning = dataroot.prepare(settings.snapshots_root_dir)
        if warning:
            log.warning("%s", warning)
        lock.acquire()
        if settings.ftp_on:
            _check_port("FTP", settings.ftp_listen_address, settings.ftp_port)
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
        daemon = app.build()
        daemon.install_signal_handlers()
        return daemon.run()
    finally:
        close_sentry()
        lock.release()


def _check_port(what: str, address: str, port: int) -> None:
    """Raise :class:`StartError` naming the port if it cannot be listened on now."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "drive-auth":
        return drive_auth_command(args)
    if args.command == "drive-archive":
        return drive_archive_command(args.config)
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
