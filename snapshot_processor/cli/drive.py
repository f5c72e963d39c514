"""``drive-auth`` (headless consent, credentials file) and ``drive-archive`` (archive now)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pylib.observe.logs import setup_logging
from snapshot_processor.cli.common import EXIT_CONFIG, EXIT_FAILED, CommandError, load_settings

# drive_auth.SCOPES' keys, copied: the Google libraries are imported only by Drive commands.
SCOPE_CHOICES = ("file", "full")

AUTH_HELP = "consent to Google Drive access (headless) and write the credentials file"
ARCHIVE_HELP = (
    "move files older than DRIVE_ARCHIVE_AFTER_HOURS into year/month/day Drive folders now"
)


def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Prints a consent URL to open in any browser; paste back the http://127.0.0.1:... "
        "address the browser ends on. Writes Google's authorized_user JSON (mode 0600) for "
        "GOOGLE_DRIVE_CREDENTIALS."
    )
    parser.add_argument(
        "--client-secrets",
        type=Path,
        required=True,
        help='the OAuth client JSON of a "Desktop app" client, from the Google Cloud console',
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the credentials (default: GOOGLE_DRIVE_CREDENTIALS)",
    )
    parser.add_argument(
        "--scope",
        choices=SCOPE_CHOICES,
        default="file",
        help="file (default): only what the daemon creates; full: all of your Drive",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="loopback redirect port (default: random)"
    )
    parser.add_argument(
        "--auth-uri", default=None, help="consent page (default: the client file's)"
    )
    parser.add_argument(
        "--token-uri", default=None, help="token endpoint (default: the client file's)"
    )


def run_auth(args: argparse.Namespace) -> int:
    """Consent, then write the credentials file; 0 when written."""
    from snapshot_processor.storage.drive import consent as drive_auth

    setup_logging(logging.WARNING)
    output = args.output
    if output is None:
        output = load_settings(args.config).storage.google_drive_credentials
        if output is None:
            raise CommandError("give --output or set GOOGLE_DRIVE_CREDENTIALS", EXIT_CONFIG)
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
        raise CommandError(str(exc), EXIT_FAILED) from None
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror}", EXIT_FAILED) from None
    return 0


def add_archive_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Files in GOOGLE_DRIVE_FOLDER older than DRIVE_ARCHIVE_AFTER_HOURS move into "
        "YYYY/MM/DD folders under it; starred files stay. Safe to run again or interrupt."
    )


def run_archive(args: argparse.Namespace, now: float | None = None) -> int:
    """Archive now and print what moved; 0 when it completed."""
    from snapshot_processor.storage.drive import destination as drive
    from snapshot_processor.storage.drive.archive import DriveArchiveError

    setup_logging(logging.WARNING)
    settings = load_settings(args.config)
    if (
        not settings.storage.google_drive_folder
        or settings.storage.google_drive_credentials is None
    ):
        raise CommandError("Drive is not configured (GOOGLE_DRIVE_FOLDER)", EXIT_CONFIG)
    destination = drive.from_settings(settings.storage, None)
    try:
        summary = destination.archive(time.time() if now is None else now, create_folder=False)
    except DriveArchiveError as exc:
        for line in exc.summary.lines()[:-1]:
            print(line)
        raise CommandError(f"{exc}; run it again to go on", EXIT_FAILED) from None
    finally:
        destination.close()
    for line in summary.lines():
        print(line)
    return 0


def service_account_note(settings_drive_on: bool, credentials: Path | None) -> None:
    """check-config: explain what a service account can and cannot write to."""
    if settings_drive_on and credentials is not None:
        from snapshot_processor.storage.drive import destination as drive

        note = drive.service_account_note(credentials)
        if note:
            print(note)
