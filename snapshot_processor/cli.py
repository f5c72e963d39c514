"""Command line: ``snapshot-processor run`` and ``snapshot-processor check-config``."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from pylib import dataroot
from pylib.daemon import EXIT_START, StartError
from pylib.logs import setup_logging
from pylib.sentry import close_sentry, init_sentry
from pylib.settings import ConfigError
from snapshot_processor import config
from snapshot_processor.app import App

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
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
