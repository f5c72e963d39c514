"""``make setup``: docker-compose.yml and .env for a home server, from docker-compose.template.

Writes, in the target folder (the checkout by default):

- ``docker-compose.yml``, the template as it is (``docker compose`` fills its ``${...}``
  from ``.env``);
- ``.env``, mode 0600: a generated FTP password, HTTP token and broker password, this
  host's name as ``DEVICE_NAME``, its LAN address as ``FTP_MASQUERADE_ADDRESS`` and its
  time zone as ``TZ`` (the status page's times);
- ``data/`` and ``secrets/`` owned by the image's user (uid 1000), and a starter
  ``config/snapshot-processor.toml`` when there is none.

It never overwrites an existing file unless asked (``--force``, ``make setup FORCE=1``),
and even then keeps every value already in ``.env``: cameras keep their FTP password. An
``.env`` kept as it is still gets the keys the template needs that it lacks (:data:`ALWAYS_SET`).
Only the standard library, so it runs on a server where nothing is installed yet.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

# The image's user and group (Dockerfile: useradd --uid 1000).
IMAGE_UID = 1000
IMAGE_GID = 1000
CHECKOUT = Path(__file__).resolve().parent.parent
TEMPLATE = CHECKOUT / "docker-compose.template"
# Keys the template reads as ${VAR}, without a default: podman-compose 1.0 leaves an empty
# default (${VAR:-}) literal, so .env must hold them, empty when there is no value.
ALWAYS_SET = ("FTP_PASS", "FTP_MASQUERADE_ADDRESS", "EXTRAS")

STARTER_CONFIG = """\
# Settings of snapshot-processor under docker compose, mounted read-only at
# /app/config/snapshot-processor.toml. Every key, with its default, is in
# snapshot-processor.example.toml; docker-compose.yml's `environment` wins over this file.
# Secrets do not belong here: put them in ../secrets/<NAME> (readable by uid 1000).
# `docker compose run --rm snapshot-processor check-config` validates the result.

# A camera the daemon fetches on each trigger for it:
# OUTPUT_1_LOCATION = "Front Door"
# OUTPUT_1_TYPE = "camera"
# OUTPUT_1_VENDOR = "foscam"          # hikvision, dahua, reolink or generic
# OUTPUT_1_ADDRESS = "192.168.1.20:88"
# OUTPUT_1_USER = "admin"
#   and its password in ../secrets/OUTPUT_1_PASSWORD

# A camera that pushes its images by FTP (user "camera", FTP_PASS from .env) into
# upload/garden:
# INPUT_1_LOCATION = "Garden"
# INPUT_1_TYPE = "camera"
"""


def lan_address() -> str | None:
    """This host's address on the route to the outside world, or None without one.

    Connecting a UDP socket sends nothing; it only picks the interface a packet would leave by.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never reached
            address: str = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith(("127.", "0.")) else address


def device_name() -> str:
    """The short host name, made fit for a routing key word (no ``.``, ``*``, ``#``, blanks)."""
    name = re.sub(r"[.*#\s]+", "-", socket.gethostname().split(".")[0]).strip("-")
    return name or "snapshot-processor"


def host_timezone(etc: Path = Path("/etc")) -> str:
    """This host's time zone name (``Europe/Paris``): ``/etc/timezone``, else where the
    ``/etc/localtime`` link points under ``zoneinfo/``, else ``UTC``."""
    found = ""
    try:
        found = (etc / "timezone").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        with contextlib.suppress(OSError):
            found = os.readlink(etc / "localtime").partition("zoneinfo/")[2]
    # A name as the zone database spells it, never a path or anything else.
    if re.fullmatch(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", found) is None:
        return "UTC"
    return found


def read_env(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an .env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def env_values(
    existing: dict[str, str], target: Path, masquerade: str | None
) -> list[tuple[str, str, str]]:
    """(name, value, comment) of every line of .env; values already there win."""
    # Relative when the files sit in the checkout, as `make setup` puts them.
    context = os.path.relpath(CHECKOUT, target.resolve())
    if context.startswith(".."):
        context = str(CHECKOUT)
    lines = [
        ("DEVICE_NAME", device_name(), "this daemon's name in routing keys and its queue"),
        ("FTP_PASS", secrets.token_urlsafe(18), "the cameras' FTP password (user: camera)"),
        ("HTTP_TOKEN", secrets.token_urlsafe(32), "the status page's and the API's token"),
        ("RABBITMQ_PASSWORD", secrets.token_urlsafe(24), "the broker user snapshot's password"),
        (
            "FTP_MASQUERADE_ADDRESS",
            masquerade if masquerade is not None else (lan_address() or ""),
            "this server's LAN address, given to cameras in FTP passive replies",
        ),
        (
            "RABBITMQ_PUBLISH",
            "127.0.0.1",
            "where port 5672 is published: 127.0.0.1 or the LAN address",
        ),
        ("HTTP_PUBLISH", "8080", "the host port of the status page, /healthz and /metrics"),
        ("TZ", host_timezone(), "the time zone of the times on the status page (the host's)"),
        ("SNAPSHOTS_HOST_DIR", "./data", "the data folder (owned by uid 1000)"),
        ("SECRETS_HOST_DIR", "./secrets", "one file per optional secret, mounted on /run/secrets"),
        ("CONFIG_HOST_DIR", "./config", "holds snapshot-processor.toml, mounted on /app/config"),
        ("BUILD_CONTEXT", context, "the checkout the image is built from"),
        (
            "EXTRAS",
            "",
            "stream: RTSP and ONVIF streams (about 90 MB more); local: the local detector "
            '(about 300 MB more); both: "stream local"',
        ),
    ]
    return [(name, existing.get(name, value), comment) for name, value, comment in lines]


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner alone, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT


def _owned_by_image(path: Path, recursive: bool) -> None:
    stat = path.stat()
    if (stat.st_uid, stat.st_gid) == (IMAGE_UID, IMAGE_GID):
        return
    os.chown(path, IMAGE_UID, IMAGE_GID)
    if recursive:
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(folder, name), IMAGE_UID, IMAGE_GID, follow_symlinks=False)


def setup(
    target: Path, *, force: bool = False, masquerade: str | None = None, template: Path = TEMPLATE
) -> list[str]:
    """Write what is missing in ``target`` (everything with ``force``); the lines to print."""
    report: list[str] = []
    target.mkdir(parents=True, exist_ok=True)

    compose = target / "docker-compose.yml"
    if compose.exists() and not force:
        report.append(f"kept {compose} (make setup FORCE=1 rewrites it from the template)")
    else:
        text = template.read_text(encoding="utf-8")
        compose.write_text(
            f"# Written by `make setup` from {template.name}.\n{text}", encoding="utf-8"
        )
        report.append(f"wrote {compose}")

    env_file = target / ".env"
    existing = read_env(env_file)
    if env_file.exists() and not force:
        report.append(f"kept {env_file} (make setup FORCE=1 rewrites it, keeping its values)")
        missing = [name for name in ALWAYS_SET if name not in existing]
        if missing:
            # Empty, as the template's old ${VAR:-} made them: nothing changes but the form.
            comments = {name: comment for name, _, comment in env_values({}, target, "")}
            added = "".join(f"# {comments[name]}\n{name}=\n" for name in missing)
            text = env_file.read_text(encoding="utf-8")
            write_private(
                env_file, text + ("" if text.endswith("\n") or not text else "\n") + added
            )
            existing.update(dict.fromkeys(missing, ""))
            report.append(
                f"added {', '.join(missing)} to {env_file}, empty (the template needs them)"
            )
    else:
        values = env_values(existing, target, masquerade)
        body = "".join(f"# {comment}\n{name}={value}\n" for name, value, comment in values)
        write_private(
            env_file,
            "# Written by `make setup`; docker compose reads it. It holds passwords: mode 0600.\n"
            + body,
        )
        kept = "its values kept, new ones generated" if existing else "new passwords and token"
        report.append(f"wrote {env_file} (mode 0600): {kept}")
        existing = {name: value for name, value, _ in values}
        if not existing["FTP_MASQUERADE_ADDRESS"]:
            report.append(
                "FTP_MASQUERADE_ADDRESS is empty (no LAN address found): set it in .env to this "
                "server's address, or cameras cannot use FTP passive mode"
            )

    def host_dir(name: str, default: str) -> Path:
        path = Path(existing.get(name) or default)
        return path if path.is_absolute() else target / path

    config_dir = host_dir("CONFIG_HOST_DIR", "./config")
    config_dir.mkdir(parents=True, exist_ok=True)
    config_file = config_dir / "snapshot-processor.toml"
    if not config_file.exists():
        config_file.write_text(STARTER_CONFIG, encoding="utf-8")
        report.append(f"wrote {config_file}: add your cameras there")

    data = host_dir("SNAPSHOTS_HOST_DIR", "./data")
    secret_dir = host_dir("SECRETS_HOST_DIR", "./secrets")
    data.mkdir(parents=True, exist_ok=True)
    secret_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        _owned_by_image(data, recursive=True)
        _owned_by_image(secret_dir, recursive=True)
        report.append(
            f"{data} and {secret_dir} belong to {IMAGE_UID}:{IMAGE_GID}, the image's user"
        )
    elif (os.geteuid(), os.getegid()) != (IMAGE_UID, IMAGE_GID):
        report.append(
            f"the container runs as {IMAGE_UID}:{IMAGE_GID}; give it the folders with:\n"
            f"    sudo chown -R {IMAGE_UID}:{IMAGE_GID} {data} {secret_dir}"
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.compose_setup [--dir DIR] [--force] [--masquerade ADDRESS]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=Path("."), help="where to write (default .)")
    parser.add_argument("--force", action="store_true", help="rewrite existing files")
    parser.add_argument(
        "--masquerade",
        default=None,
        help="FTP_MASQUERADE_ADDRESS (default: this host's LAN address)",
    )
    args = parser.parse_args(argv)
    try:
        lines = setup(args.dir, force=args.force, masquerade=args.masquerade)
    except OSError as exc:
        print(f"make setup: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    where = "" if args.dir == Path(".") else f" SETUP_DIR={args.dir}"
    print(f"next: add cameras to the config file, then `make build` and `make up{where}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
